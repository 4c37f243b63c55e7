// Sign-in: the organization's key pair (and the admin token, for the admin views), checked
// against the API before anything is kept.
import { useState } from "preact/hooks";
import { ApiError, checkCredentials } from "../api";
import { ErrorNote } from "../components";
import { type Credentials, saveCredentials } from "../session";

export function SignIn({ reason, onSignedIn }: { reason: string | null; onSignedIn: (organizationId: string) => void }) {
  const [error, setError] = useState<ApiError>();
  const [busy, setBusy] = useState(false);

  const submit = async (event: Event) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget as HTMLFormElement);
    const credentials: Credentials = {
      apiKey: String(form.get("api-key")).trim(),
      apiSecret: String(form.get("api-secret")).trim(),
      adminToken: String(form.get("admin-token") ?? "").trim() || undefined,
    };
    setBusy(true);
    setError(undefined);
    try {
      const organizationId = await checkCredentials(credentials);
      saveCredentials(credentials);
      onSignedIn(organizationId);
    } catch (e) {
      setError(e instanceof ApiError ? e : new ApiError(0, String(e), null, null));
    } finally {
      setBusy(false);
    }
  };

  return (
    <main class="sign-in">
      <h1>Calls console</h1>
      <p>Sign in with your organization's API key and secret. They are kept in this tab only, until you sign out or close it.</p>
      {reason ? (
        <p class="notice" role="status">
          {reason}
        </p>
      ) : null}
      <form onSubmit={submit} autocomplete="off">
        <label>
          API key
          <input name="api-key" required autocomplete="off" spellcheck={false} placeholder="sk_…" />
        </label>
        <label>
          API secret
          <input name="api-secret" type="password" required autocomplete="off" placeholder="s3cr3t_…" />
        </label>
        <label>
          Admin token <small>(optional: the API keys view)</small>
          <input name="admin-token" type="password" autocomplete="off" />
        </label>
        <ErrorNote error={error} context="Sign-in failed" />
        <button type="submit" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
      </form>
    </main>
  );
}
