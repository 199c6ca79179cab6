/* The index page's demo sign-in (only served with SWITCHBOARD_DEMO_USERS): sign in as a demo
 * user, show who the server thinks you are (GET /api/whoami), and try each demo topic.
 *
 * - Sign in: POST /api/demo/session {"user"}; the server sets the HttpOnly token cookie and
 *   also returns the token, kept in this tab's sessionStorage for the SSE page's fetch()
 *   reader (a demo shortcut). Sign out: DELETE /api/session.
 * - Each topic row follows its topic with an EventSource, which sends the cookie by itself.
 *   A refused EventSource only fires "error" (no status), so the row asks once with fetch()
 *   to show the server's answer: 401 (sign in) or 403 (not allowed).
 * - Each row's button publishes one message with fetch(); a 401 or 403 says why the same way. */
(function () {
  "use strict";
  const S = window.Switchboard;
  const { t, tx } = S;
  const panel = document.querySelector("[data-auth-panel]");
  if (!panel) return;
  const statusEl = panel.querySelector("[data-auth-status]");
  const signInButtons = [...panel.querySelectorAll("[data-sign-in]")];
  const signOutButton = panel.querySelector("[data-sign-out]");
  const facts = Object.fromEntries([...panel.querySelectorAll("[data-fact]")].map((el) => [el.dataset.fact, el]));
  const headerName = document.querySelector(".whoami strong");
  const probes = [...panel.querySelectorAll("[data-probe]")].map((li) => ({
    topic: li.dataset.probe,
    subscribeEl: li.querySelector("[data-subscribe]"),
    publishButton: li.querySelector("[data-publish]"),
    publishEl: li.querySelector("[data-publish-result]"),
    lastEl: li.querySelector("[data-last-event]"),
    source: null,
  }));

  let expiresAt = null; // browser clock (s) when the signed-in token expires
  let countdown = null;

  function topicUrl(template, topic) {
    return template.replace("__topic__", encodeURIComponent(topic));
  }

  function status(content, kind = "info") {
    statusEl.replaceChildren(content);
    statusEl.dataset.kind = kind;
  }

  /** Set an output's text (a string or a fragment) and its data-result: allowed, 401, 403,
   *  error or pending. */
  function show(el, result, content) {
    el.dataset.result = result;
    el.replaceChildren(content);
  }

  function showError(el, err) {
    show(el, err instanceof S.Refusal ? String(err.status) : "error", S.explain(err));
  }

  // -- who am I ----------------------------------------------------------------------------

  function patterns(list) {
    return list && list.length ? S.verbatim(list.join(", ")) : t("nothing");
  }

  function showName(sender) {
    // The header and body[data-sender] name the same sender (the chat marks "mine" with it).
    document.body.dataset.sender = sender;
    S.sender = sender;
    if (headerName) headerName.textContent = sender;
  }

  function tickCountdown() {
    const left = Math.max(0, Math.round(expiresAt - Date.now() / 1000));
    facts.expires.textContent = t("{min} min {s} s", { min: Math.floor(left / 60), s: String(left % 60).padStart(2, "0") });
    if (left === 0) refresh(); // the cookie is gone with the token: show what a visitor gets
  }

  function showIdentity(me) {
    clearInterval(countdown);
    expiresAt = me.expires_in === null ? null : Date.now() / 1000 + me.expires_in;
    facts.sender.replaceChildren(S.verbatim(me.sender));
    facts.sub.replaceChildren(me.sub ? S.verbatim(me.sub) : t("nobody (anonymous)"));
    facts.via.textContent = {
      cookie: t("the HttpOnly cookie"), bearer: t("an Authorization header"), ticket: t("a single-use ticket"),
      anonymous: t("none (anonymous)"), open: t("none needed (access control is off)"),
    }[me.via] || me.via;
    facts.subscribe.replaceChildren(patterns(me.subscribe));
    facts.publish.replaceChildren(patterns(me.publish));
    if (expiresAt === null) {
      facts.expires.textContent = t("no token");
    } else {
      tickCountdown();
      countdown = setInterval(tickCountdown, 1000);
    }
    showName(me.sender);
    panel.dataset.sub = me.sub || "";
    for (const button of signInButtons) button.setAttribute("aria-pressed", String(button.dataset.signIn === me.sub));
    signOutButton.disabled = !me.sub;
    if (me.sub) {
      status(tx("Signed in as {user}: the token travels in an HttpOnly cookie (document.cookie cannot see it).",
        { user: S.verbatim(me.sub) }), "ok");
    } else {
      S.demoToken.clear(); // no token behind this tab any more
      status(t("Not signed in: you get what anonymous visitors may do."), "info");
    }
  }

  function showUnknown(err) {
    clearInterval(countdown);
    for (const el of Object.values(facts)) el.textContent = t("unknown");
    panel.dataset.sub = "";
    signOutButton.disabled = false; // a bad cookie: signing out clears it
    const hint = err instanceof S.Refusal && err.status === 401
      ? t(" Your cookie holds a token the server no longer accepts (expired, or signed with the key of an earlier start): sign in again, or sign out to clear it.")
      : "";
    status(S.join(tx("Who am I? {why}.", { why: S.explain(err) }), hint), "error");
  }

  async function whoami() {
    try {
      const res = await fetch(S.data.whoamiUrl, { cache: "no-store" });
      if (!res.ok) throw await S.responseError(res);
      showIdentity(await res.json());
    } catch (err) {
      showUnknown(err);
    }
  }

  // -- what may I see -----------------------------------------------------------------------

  function describeEvent(event) {
    const data = event.data;
    const text = data && typeof data === "object" && "text" in data ? String(data.text) : JSON.stringify(data);
    return tx("{sender}: {text} (#{id})", { sender: S.verbatim(event.sender || t("server")), text: S.verbatim(text), id: event.id });
  }

  function follow(probe) {
    if (probe.source) probe.source.close();
    const url = topicUrl(S.data.streamUrl, probe.topic);
    const es = new EventSource(url);
    probe.source = es;
    show(probe.subscribeEl, "pending", t("connecting…"));
    es.addEventListener("open", () => {
      if (es === probe.source) show(probe.subscribeEl, "allowed", t("allowed: listening"));
    });
    es.addEventListener("message", (ev) => {
      if (es === probe.source) probe.lastEl.replaceChildren(describeEvent(JSON.parse(ev.data)));
    });
    es.addEventListener("expired", () => {
      // The server ended the stream: the token expired. The cookie went with it.
      if (es === probe.source) refresh();
    });
    es.addEventListener("error", async () => {
      if (es !== probe.source) return;
      if (es.readyState === EventSource.CONNECTING) {
        show(probe.subscribeEl, "pending", t("stream lost; the browser reconnects by itself"));
        return;
      }
      // CLOSED: the browser gave up, most likely on a 401 or 403; ask once why.
      probe.source = null;
      const why = await S.streamError(url);
      if (probe.source !== null) return; // followed again meanwhile (signed in or out)
      if (why) showError(probe.subscribeEl, why);
      else show(probe.subscribeEl, "error", t("the stream failed, but it would open now: reload to follow it again"));
    });
  }

  async function publish(probe) {
    probe.publishButton.disabled = true;
    show(probe.publishEl, "pending", t("sending…"));
    try {
      const event = await S.publishHTTP(topicUrl(S.data.publishUrl, probe.topic),
        { text: t("hello {topic}, from {sender}", { topic: probe.topic, sender: S.sender }) });
      show(probe.publishEl, "allowed", t("allowed: published #{id}", { id: event.id }));
    } catch (err) {
      showError(probe.publishEl, err);
    } finally {
      probe.publishButton.disabled = false;
    }
  }

  function tryEverything() {
    for (const probe of probes) {
      show(probe.publishEl, "none", "");
      probe.lastEl.textContent = t("none yet");
      follow(probe);
    }
  }

  let refreshing = null;

  /** Ask who we are, then follow every topic again with the credentials we have now (one
   *  refresh at a time: every stream of an expired token asks for one at once). */
  function refresh() {
    if (!refreshing) {
      refreshing = whoami().then(tryEverything).finally(() => { refreshing = null; });
    }
    return refreshing;
  }

  // -- sign in, sign out ----------------------------------------------------------------------

  function busy(on) {
    for (const button of signInButtons) button.disabled = on;
    if (on) signOutButton.disabled = true;
  }

  async function signIn(user) {
    busy(true);
    status(tx("Signing in as {user}…", { user: S.verbatim(user) }));
    try {
      const res = await fetch(S.data.demoSessionUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ user }),
      });
      if (!res.ok) throw await S.responseError(res);
      const answer = await res.json();
      S.demoToken.save(answer.token, answer.sub, answer.expires_in);
      busy(false);
      await refresh();
    } catch (err) {
      busy(false);
      status(tx("Sign-in failed: {why}", { why: S.explain(err) }), "error");
    }
  }

  async function signOut() {
    busy(true);
    try {
      const res = await fetch(S.data.sessionUrl, { method: "DELETE" });
      if (!res.ok) throw await S.responseError(res);
      S.demoToken.clear();
      busy(false);
      await refresh();
    } catch (err) {
      busy(false);
      status(tx("Sign-out failed: {why}", { why: S.explain(err) }), "error");
    }
  }

  for (const button of signInButtons) button.addEventListener("click", () => signIn(button.dataset.signIn));
  signOutButton.addEventListener("click", signOut);
  for (const probe of probes) probe.publishButton.addEventListener("click", () => publish(probe));

  window.addEventListener("pagehide", () => {
    clearInterval(countdown);
    for (const probe of probes) {
      if (probe.source) probe.source.close();
      probe.source = null;
    }
  });
  window.addEventListener("pageshow", (ev) => {
    if (ev.persisted) refresh(); // back from the bfcache: the streams were closed on pagehide
  });

  refresh().then(() => { panel.dataset.ready = "true"; });
})();
