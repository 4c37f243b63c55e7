// Small pieces every page uses.
import type { ComponentChildren } from "preact";
import type { ApiError } from "./api";
import { tone, words } from "./format";
import { href } from "./router";

/** The API's message for an action that failed, where the action was taken. */
export function ErrorNote({ error, context }: { error: ApiError | undefined; context?: string }) {
  if (!error) return null;
  return (
    <div class="error" role="alert">
      <strong>{context ? `${context}: ` : ""}{error.message}</strong>
      {error.detail ? <span> — {error.detail}</span> : null}
      {error.status ? <small> (HTTP {error.status}{error.requestId ? `, request ${error.requestId}` : ""})</small> : null}
    </div>
  );
}

/** A status as a coloured badge. */
export function Badge({ status }: { status: string | null | undefined }) {
  return <span class={`badge ${tone(status)}`}>{words(status)}</span>;
}

/** Labelled values, as a description list. */
export function Fields({ rows }: { rows: [string, ComponentChildren][] }) {
  return (
    <dl class="fields">
      {rows.map(([label, value]) => (
        <div key={label}>
          <dt>{label}</dt>
          <dd>{value ?? "—"}</dd>
        </div>
      ))}
    </dl>
  );
}

/** A value shown as indented JSON. */
export function Json({ value, label }: { value: unknown; label: string }) {
  return (
    <pre class="json" tabIndex={0} aria-label={label}>
      {JSON.stringify(value, null, 2)}
    </pre>
  );
}

/** Shown while the first answer of a page is awaited. */
export function Loading() {
  return <p class="loading" role="status">Loading…</p>;
}

/** A page's frame: navigation, who is signed in, sign-out, and the page. */
export function Layout({
  current,
  organizationId,
  admin,
  onSignOut,
  children,
}: {
  current: string;
  organizationId: string | null;
  admin: boolean;
  onSignOut: () => void;
  children: ComponentChildren;
}) {
  const links: [string, string][] = [
    ["calls", "Calls"],
    ["test-call", "Test call"],
    ["agents", "Agents"],
    ["phone-numbers", "Phone numbers"],
    ["webhooks", "Webhooks"],
    ["batches", "Batch calls"],
    ...(admin ? ([["keys", "API keys"]] as [string, string][]) : []),
  ];
  return (
    <>
      <header class="top">
        <a class="brand" href={href("calls")}>Calls console</a>
        <nav aria-label="Sections">
          {links.map(([path, label]) => (
            <a key={path} href={href(path)} aria-current={current === path ? "page" : undefined}>
              {label}
            </a>
          ))}
        </nav>
        <span class="who">{organizationId ?? ""}</span>
        <button type="button" class="secondary" onClick={onSignOut}>
          Sign out
        </button>
      </header>
      <main>{children}</main>
    </>
  );
}
