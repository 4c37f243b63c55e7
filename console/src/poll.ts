// Live pages: a load, then the same load again every few seconds while the tab is visible
// and `live` holds, the last answer kept on screen while the next is fetched.
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError } from "./api";

export const POLL_MS = 2000;

/** What a load gave: the value, or the error the API answered. */
export interface Loaded<T> {
  value: T | undefined;
  error: ApiError | undefined;
  loading: boolean;
  reload: () => void;
}

/** `load()`, again whenever `key` changes, and every POLL_MS while `live(value)`. */
export function useLoad<T>(load: () => Promise<T>, key: string, live: (value: T) => boolean = () => false): Loaded<T> {
  const [state, setState] = useState<{ value?: T; error?: ApiError; loading: boolean; key: string }>({
    loading: true,
    key,
  });
  const [round, setRound] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;
  const liveRef = useRef(live);
  liveRef.current = live;

  useEffect(() => {
    let stopped = false;
    let timer: number | undefined;
    const fetchOnce = async () => {
      try {
        const value = await loadRef.current();
        if (stopped) return;
        setState({ value, loading: false, key });
        if (liveRef.current(value)) timer = window.setTimeout(whenVisible, POLL_MS);
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
