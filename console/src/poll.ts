// Live pages: a load, then the same load again every few seconds while the tab is visible
// and `live` holds, the last answer kept on screen while the next is fetched. A load given
// the ETag of what is shown (the reads that take If-None-Match: getCall, listCalls) may
// answer UNCHANGED (304): the page keeps what it shows and draws nothing again.
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, UNCHANGED, type Unchanged, versionOf } from "./api";

export const POLL_MS = 2000;

/** What a load gave: the value, or the error the API answered. */
export interface Loaded<T> {
  value: T | undefined;
  error: ApiError | undefined;
  loading: boolean;
  reload: () => void;
}

/** `load(etag)`, again whenever `key` changes, and every POLL_MS while `live(value)`.
 * `etag` is the version of the value shown (undefined on a first read, or when the API
 * gave it none); a load that sends it as If-None-Match may resolve UNCHANGED. */
export function useLoad<T>(
  load: (etag: string | undefined) => Promise<T | Unchanged>,
  key: string,
  live: (value: T) => boolean = () => false,
): Loaded<T> {
  const [state, setState] = useState<{ value?: T; error?: ApiError; loading: boolean; key: string }>({
    loading: true,
    key,
  });
  const [round, setRound] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;
  const liveRef = useRef(live);
  liveRef.current = live;
  const shown = useRef<{ key: string; value?: T }>({ key });

  useEffect(() => {
    let stopped = false;
    let timer: number | undefined;
    if (shown.current.key !== key) shown.current = { key };
    const fetchOnce = async () => {
      try {
        const answer = await loadRef.current(versionOf(shown.current.value));
        if (stopped) return;
        if (answer === UNCHANGED) {
          // 304: the value shown is current; only a stale error or spinner goes.
          setState((previous) => (previous.error || previous.loading ? { ...previous, error: undefined, loading: false } : previous));
        } else {
          shown.current = { key, value: answer };
          setState({ value: answer, loading: false, key });
        }
        const value = shown.current.value;
        if (value !== undefined && liveRef.current(value)) timer = window.setTimeout(whenVisible, POLL_MS);
      } catch (e) {
        if (stopped) return;
        const error = e instanceof ApiError ? e : new ApiError(0, String(e), null, null);
        setState((previous) => ({ value: previous.key === key ? previous.value : undefined, error, loading: false, key }));
      }
    };
    const whenVisible = () => {
      if (document.hidden) timer = window.setTimeout(whenVisible, POLL_MS);
      else void fetchOnce();
    };
    setState((previous) => ({ ...previous, loading: true, key, ...(previous.key === key ? {} : { value: undefined, error: undefined }) }));
    void fetchOnce();
    return () => {
      stopped = true;
      window.clearTimeout(timer);
    };
  }, [key, round]);

  return {
    value: state.key === key ? state.value : undefined,
    error: state.key === key ? state.error : undefined,
    loading: state.loading,
    reload: () => setRound((n) => n + 1),
  };
}
