// The console's only way to the server: the public API, through a client typed from
// openapi.yaml (openapi-fetch over the types openapi-typescript generates into api.d.ts).
import createClient, { type Middleware } from "openapi-fetch";
import type { components, paths } from "./schema";
import { type Credentials, forgetCredentials, savedCredentials } from "./session";

export type Schemas = components["schemas"];
export type Call = Schemas["Call"];
export type WebhookEvent = Schemas["WebhookEvent"];
export type { paths };

/** An answer of the API that is not a success, with the message the API gave. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly detail: string | null,
    readonly requestId: string | null,
  ) {
    super(message);
  }
}

/** Called when the API refuses the session's key mid-session (revoked, or removed). */
let onSessionRefused: (reason: string) => void = () => {};

export function whenSessionRefused(handler: (reason: string) => void): void {
  onSessionRefused = handler;
}

const signWithSession: Middleware = {
  onRequest({ request, schemaPath }) {
    const credentials = savedCredentials();
    if (!credentials) return request;
    if (schemaPath.startsWith("/organizations")) {
      if (credentials.adminToken) request.headers.set("Authorization", `Bearer ${credentials.adminToken}`);
    } else {
      request.headers.set("X-API-KEY", credentials.apiKey);
      request.headers.set("X-API-SECRET", credentials.apiSecret);
    }
    return request;
  },
};

/** The typed client of the API this page was served by. */
export const api = createClient<paths>({ baseUrl: new URL("../api", location.href).href });
api.use(signWithSession);

interface Answer<T> {
  data?: T;
  error?: unknown;
  response: Response;
}

/** The version (ETag) each answer's body came with, for a conditional read of it later. */
const versions = new WeakMap<object, string>();

/** The ETag `value` was answered with, if it came from the API with one. */
export function versionOf(value: unknown): string | undefined {
  return typeof value === "object" && value !== null ? versions.get(value) : undefined;
}

/** A conditional read answered 304: what is on screen is still the current version. */
export const UNCHANGED = Symbol("unchanged");
export type Unchanged = typeof UNCHANGED;

async function reached<T>(request: Promise<Answer<T>>): Promise<Answer<T>> {
  try {
    return await request;
  } catch (e) {
    throw new ApiError(0, "The server could not be reached", String(e), null);
  }
}

/** The answer's body, or an ApiError carrying the API's message. A 401 on a signed-in
 * session ends it: the key was revoked or the secret no longer matches. */
export async function answered<T>(request: Promise<Answer<T>>): Promise<T> {
  const answer = await reached(request);
  if (answer.response.ok && answer.data !== undefined) {
    const etag = answer.response.headers.get("ETag");
    if (etag && typeof answer.data === "object" && answer.data !== null) versions.set(answer.data, etag);
    return answer.data;
  }
  const envelope = (answer.error ?? {}) as { message?: string; error?: string; request_id?: string };
  const error = new ApiError(
    answer.response.status,
    envelope.message || `${answer.response.status} ${answer.response.statusText}`,
    envelope.error && envelope.error !== envelope.message ? envelope.error : null,
    envelope.request_id ?? answer.response.headers.get("X-Request-ID"),
  );
  if (answer.response.status === 401 && savedCredentials() && !answer.response.url.includes("/organizations")) {
    forgetCredentials();
    onSessionRefused(error.detail ?? error.message);
  }
  return Promise.reject(error);
}

/** As `answered`, for a read sent with `If-None-Match`: UNCHANGED when the API answers
 * 304 Not Modified (no body: the version named is still the current one). */
export async function answeredUnlessUnchanged<T>(request: Promise<Answer<T>>): Promise<T | Unchanged> {
  const answer = await reached(request);
  return answer.response.status === 304 ? UNCHANGED : answered(Promise.resolve(answer));
}

/** The `If-None-Match` header naming `etag` (none without one). */
export function ifNoneMatch(etag: string | undefined): { "If-None-Match"?: string } {
  return etag ? { "If-None-Match": etag } : {};
}

/** Check `credentials` by reading one call with them, without keeping them: the
 * organization's id, or the API's refusal. */
export async function checkCredentials(credentials: Credentials): Promise<string> {
  const headers = { "X-API-KEY": credentials.apiKey, "X-API-SECRET": credentials.apiSecret };
  const page = await answered(api.GET("/calls", { params: { query: { limit: 1 } }, headers }));
  if (credentials.adminToken) {
    const organization = page.data.organization_id;
    await answered(
      api.GET("/organizations/{organization_id}/api-keys", {
        params: { path: { organization_id: organization } },
        headers: { Authorization: `Bearer ${credentials.adminToken}` },
      }),
    );
  }
  return page.data.organization_id;
}
