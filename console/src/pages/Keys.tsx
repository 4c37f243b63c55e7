// The admin view: the signed-in organization's API keys (listApiKeys), with revocation
// (revokeApiKey); shown when the admin token was given at sign-in.
import { useState } from "preact/hooks";
import { ApiError, answered, api } from "../api";
import { Badge, ErrorNote, Loading } from "../components";
import { when } from "../format";
import { useLoad } from "../poll";

export function Keys({ organizationId }: { organizationId: string }) {
  const loaded = useLoad(
    () =>
      answered(
        api.GET("/organizations/{organization_id}/api-keys", { params: { path: { organization_id: organizationId } } }),
      ),
    organizationId,
  );
  const [error, setError] = useState<ApiError>();
  const revoke = async (apiKeyId: string) => {
    if (!confirm(`Revoke ${apiKeyId}? Clients using it are refused from now on.`)) return;
    setError(undefined);
    try {
      await answered(
        api.DELETE("/organizations/{organization_id}/api-keys/{api_key_id}", {
          params: { path: { organization_id: organizationId, api_key_id: apiKeyId } },
        }),
      );
      loaded.reload();
    } catch (e) {
      setError(e as ApiError);
    }
  };
  const keys = loaded.value?.data.api_keys;
  return (
    <section aria-labelledby="keys-title">
      <h1 id="keys-title">API keys of {organizationId}</h1>
      <ErrorNote error={loaded.error} context="Could not list the keys" />
      <ErrorNote error={error} context="Could not revoke the key" />
      {!keys && !loaded.error ? <Loading /> : null}
      {keys ? (
        <table>
          <thead>
            <tr>
              <th scope="col">Key</th>
              <th scope="col">State</th>
              <th scope="col">Created</th>
              <th scope="col">
                <span class="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {keys.map((key) => (
              <tr key={key.api_key_id}>
                <td>
                  <code>{key.api_key}</code> {key.name ?? ""}
                </td>
                <td>
                  <Badge status={key.status} />
                </td>
                <td>{when(key.created_at)}</td>
                <td>
                  {key.status === "ACTIVE" ? (
                    <button type="button" class="secondary" onClick={() => revoke(key.api_key_id)}>
                      Revoke
                    </button>
                  ) : null}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
    </section>
  );
}
