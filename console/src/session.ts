// The signed-in credentials, kept in this tab's sessionStorage only: never in the URL,
// localStorage, cookies or logs. Closing the tab or signing out forgets them.

/** What the console signs its API requests with. */
export interface Credentials {
  apiKey: string;
  apiSecret: string;
  /** The admin token, for the admin views (optional). */
  adminToken?: string;
}

const STORAGE_KEY = "calls-console.credentials";

/** The credentials of this tab's session, if it is signed in. */
export function savedCredentials(): Credentials | null {
  const stored = sessionStorage.getItem(STORAGE_KEY);
  if (!stored) return null;
  try {
    return JSON.parse(stored) as Credentials;
  } catch {
    sessionStorage.removeItem(STORAGE_KEY);
    return null;
  }
}

/** Keep `credentials` for this tab's session. */
export function saveCredentials(credentials: Credentials): void {
  sessionStorage.setItem(STORAGE_KEY, JSON.stringify(credentials));
}

/** Forget the credentials (sign-out, or a key the API no longer accepts). */
export function forgetCredentials(): void {
  sessionStorage.removeItem(STORAGE_KEY);
}
