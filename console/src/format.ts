// How times, durations, amounts and statuses read on the page.

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

/** A Unix time in milliseconds (or an ISO string), as a local date and time. */
export function when(time: number | string | null | undefined): string {
  if (time === null || time === undefined || time === "") return "—";
  const date = new Date(time);
  return Number.isNaN(date.getTime()) ? String(time) : dateTime.format(date);
}

/** A duration in milliseconds as `1:05` (minutes:seconds) or `1:02:05`. */
export function duration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return "—";
  const total = Math.round(ms / 1000);
  const [h, m, s] = [Math.floor(total / 3600), Math.floor((total % 3600) / 60), total % 60];
  const mmss = `${h ? String(m).padStart(2, "0") : m}:${String(s).padStart(2, "0")}`;
  return h ? `${h}:${mmss}` : mmss;
}

/** A position in a recording (milliseconds) as `0:05.2`. */
export function offset(ms: number): string {
  const seconds = ms / 1000;
  return `${Math.floor(seconds / 60)}:${(seconds % 60).toFixed(1).padStart(4, "0")}`;
}

/** A cost as the API gives it (`combined_cost`, no currency stated), to 4 decimals. */
export function amount(value: number | null | undefined): string {
  return value === null || value === undefined ? "—" : value.toFixed(4);
}

/** An enum value (any case) as words: `USER_HANGUP` → `user hangup`. */
export function words(value: string | null | undefined): string {
  return value ? value.toLowerCase().replace(/_/g, " ") : "—";
}

/** The colour class of a status badge. */
export function tone(status: string | null | undefined): string {
  switch ((status ?? "").toLowerCase()) {
    case "ended":
    case "completed":
    case "delivered":
      return "good";
    case "error":
    case "failed":
      return "bad";
    case "ongoing":
    case "calling":
    case "sent":
    case "in_progress":
      return "live";
    case "pending":
    case "registered":
    case "scheduled":
    case "paused":
      return "waiting";
    default:
      return "quiet";
  }
}

/** A datetime-local input's value (local time) as Unix ms, or undefined when empty. */
export function fromLocalInput(value: string): number | undefined {
  if (!value) return undefined;
  const time = new Date(value).getTime();
  return Number.isNaN(time) ? undefined : time;
}
