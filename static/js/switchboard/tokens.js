/* switchboard.js, part: the application's token, asked for when needed and renewed before it expires. */

import { SwitchboardError } from "./errors.js";

/** The claims of a JWT, or null for anything else (opaque tokens are fine: then only the
 *  server's word, {"op": "expired"} or a 401, says when it ran out). */
export function jwtClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part));
    return claims && typeof claims === "object" ? claims : null;
  } catch (err) {
    return null;
  }
}

/** Seconds before expiry at which a token is renewed: a quarter of its life, at most 30. */
export function refreshMargin(lifetime) {
  return Math.min(30, Math.max(0, lifetime) / 4);
}

export class TokenSource {
  constructor(option) {
    this.option = option;
    this.token = null;
    this.fetchedAt = 0;
    this.stale = true; // the next get() asks the application again
    this.inflight = null;
  }

  get refreshable() { return typeof this.option === "function"; }

  /** Seconds the given token has left, or null when it does not say. */
  static secondsLeft(token) {
    const claims = token ? jwtClaims(token) : null;
    return claims && typeof claims.exp === "number" ? claims.exp - Date.now() / 1000 : null;
  }

  /** Seconds from now until `token` should be replaced, or null when it does not say. */
  refreshIn(token) {
    const claims = token ? jwtClaims(token) : null;
    if (!claims || typeof claims.exp !== "number") return null;
    const start = typeof claims.iat === "number" ? claims.iat : this.fetchedAt / 1000;
    return claims.exp - refreshMargin(claims.exp - start) - Date.now() / 1000;
  }

  /** The token to send now (null: none, the connection is anonymous or uses its cookie). */
  async get(force = false) {
    if (this.option == null) return null;
    if (typeof this.option === "string") return this.option;
    if (!force && !this.stale && this.token !== null) {
      const left = this.refreshIn(this.token);
      if (left === null || left > 0) return this.token;
    }
    if (!this.inflight) {
      this.inflight = (async () => {
        try {
          const token = await this.option();
          this.token = token || null;
          this.fetchedAt = Date.now();
          this.stale = false;
          return this.token;
        } catch (err) {
          throw new SwitchboardError("token_failed", `the token function failed: ${(err && err.message) || err}`,
            { cause: err });
        } finally {
          this.inflight = null;
        }
      })();
    }
    return this.inflight;
  }
}
