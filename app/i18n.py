"""The pages' two languages: which one a request gets, the switch that changes it, and the
messages the pages' JavaScript shows.

The language is the ``lang`` cookie's (set by the switch on every page), else the best
match of ``Accept-Language``, else English. Messages come from the gettext catalog in
``translations/`` (``make translations`` extracts, updates and compiles it); English is
the msgids themselves, so it needs no catalog. API answers stay English: only pages are
translated (they translate the error codes they show, not the server's messages).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from babel.messages.plurals import get_plural
from flask import Blueprint, Flask, Response, abort, redirect, request
from flask_babel import Babel, get_locale, gettext, ngettext

from .js_messages import JS_MESSAGES

LANGUAGES = ("en", "ko")  # the first is the default, and the language of the msgids
COOKIE = "lang"
COOKIE_SECONDS = 365 * 24 * 3600
# What each language calls itself, for the switch (always shown in its own language).
NAMES = {"en": "English", "ko": "한국어"}

bp = Blueprint("i18n", __name__)


def select_locale() -> str:
    """The request's language: the switch's cookie, else Accept-Language, else English."""
    chosen = request.cookies.get(COOKIE)
    if chosen in LANGUAGES:
        return chosen
    return request.accept_languages.best_match(LANGUAGES, default=LANGUAGES[0])


def current_language() -> str:
    """The language of the page being rendered ("en" or "ko")."""
    locale = get_locale()
    return locale.language if locale is not None else LANGUAGES[0]


def js_catalog() -> dict:
    """What the page's JavaScript needs to speak the page's language (common.js reads it).

    ``messages`` maps each JavaScript msgid to its translation; a plural pair maps its
    singular to the list of the language's forms. English sends none: the msgids are
    English, and common.js falls back to them.
    """
    lang = current_language()
    messages: dict[str, str | list[str]] = {}
    if lang != LANGUAGES[0]:
        forms = _plural_form_count(lang)
        for entry in JS_MESSAGES:
            if isinstance(entry, tuple):
                singular, plural = entry
                # n = 1 and n = 2 pick forms 0 and 1 in a language with one or two forms
                # (Korean has one); common.js picks among them with Intl.PluralRules.
                messages[singular] = [ngettext(singular, plural, n) for n in (1, 2)[:forms]]
            else:
                messages[entry] = gettext(entry)
    return {"lang": lang, "messages": messages}


def _plural_form_count(lang: str) -> int:
    """How many plural forms the language has (as ``pybabel init`` writes in its catalog)."""
    return min(2, get_plural(lang).num_plurals)


def safe_next(target: str | None) -> str:
    """``target`` if it is a path on this site, else ``/``: the switch never redirects away."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def here() -> str:
    """This request's path and query, for the switch to come back to."""
    query = request.query_string.decode("latin-1")
    return request.path + (f"?{query}" if query else "")


@bp.get("/lang/<code>")
def switch(code: str) -> Response:
    """Remember the chosen language in a cookie, then go back to the page (on this site only)."""
    if code not in LANGUAGES:
        abort(404)
    response = redirect(safe_next(request.args.get("next")), code=303)
    response.set_cookie(
        COOKIE, code, max_age=COOKIE_SECONDS, path="/", samesite="Lax", httponly=True, secure=request.is_secure
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    """Install Flask-Babel with our locale selector, the switch route and template helpers."""
    Babel(app, locale_selector=select_locale, default_locale=LANGUAGES[0])
    # {% trans %} blocks collapse their whitespace, as babel.cfg extracts them.
    app.jinja_env.policies["ext.i18n.trimmed"] = True
    app.register_blueprint(bp)

    @app.context_processor
    def language_helpers() -> dict:
        return {
            "current_language": current_language,
            "languages": LANGUAGES,
            "language_names": NAMES,
            "js_catalog": js_catalog,
            "here": here,
        }

    @app.after_request
    def vary_by_language(response: Response) -> Response:
        if response.mimetype == "text/html":
            # A page's words depend on these two headers: a cache must not mix languages.
            response.vary.add("Accept-Language")
            response.vary.add("Cookie")
        return response
