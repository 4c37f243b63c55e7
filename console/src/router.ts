// Pages are addressed by the URL's fragment (`#/calls/call_…?call_status=ended`), so the
// server serves one page and filters survive a reload. Credentials never go there.
import { useEffect, useState } from "preact/hooks";

/** Where the page is: the path's parts and the query's values. */
export interface Route {
  parts: string[];
  query: URLSearchParams;
}

/** The route the fragment names (`#/` and an empty fragment are the calls list). */
export function currentRoute(): Route {
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?", 2);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts: parts.length ? parts : ["calls"], query: new URLSearchParams(query) };
}

/** The current route, following the fragment as it changes. */
export function useRoute(): Route {
  const [route, setRoute] = useState(currentRoute);
  useEffect(() => {
    const follow = () => setRoute(currentRoute());
    addEventListener("hashchange", follow);
    return () => removeEventListener("hashchange", follow);
  }, []);
  return route;
}

/** The fragment of a page: `href("calls", id)` → `#/calls/<id>`. */
export function href(...parts: string[]): string {
  return `#/${parts.map(encodeURIComponent).join("/")}`;
}

/** Go to a page, with `query` (empty values left out). */
export function go(path: string, query?: URLSearchParams): void {
  const search = query && query.toString() ? `?${query}` : "";
  location.hash = `${path}${search}`;
}
