/* switchboard.js, part: the one error type, and how an HTTP answer or a network failure becomes one. */

/** A failure, with the server's error code (or this library's) and what else is known. */
export class SwitchboardError extends Error {
  constructor(code, message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "SwitchboardError";
    this.code = code;
    this.status = details.status ?? null; // the HTTP status, when it came over HTTP
    this.topic = details.topic ?? null;
    this.retryAfter = details.retryAfter ?? null; // seconds, when the server said
    this.transport = details.transport ?? null;
    this.fromServer = Boolean(details.fromServer); // the server itself answered with this code
    this.closeCode = details.closeCode ?? null; // a WebSocket's close code, when it closed
    this.closeReason = details.closeReason ?? null;
  }
}

/** The error of an HTTP answer that is not a success: the server's {"error", "message"}. */
export function httpError(res, transport) {
  let body = null;
  try {
    body = JSON.parse(res.body);
  } catch (err) { /* not JSON: a proxy's page, most likely */ }
  const code = body && typeof body.error === "string" ? body.error : `http_${res.status}`;
  const message = body && typeof body.message === "string" ? body.message : `HTTP ${res.status}`;
  const retry = Number(res.headers.get("Retry-After"));
  return new SwitchboardError(code, message, {
    status: res.status, transport, retryAfter: Number.isFinite(retry) && retry > 0 ? retry : null,
    fromServer: Boolean(body && body.error),
    topic: body && typeof body.topic === "string" ? body.topic : null,
  });
}

export function networkError(err, url, transport) {
  if (err instanceof SwitchboardError) return err;
  return new SwitchboardError("network", `no answer from ${url}: ${(err && err.message) || err}`,
    { transport, cause: err });
}
