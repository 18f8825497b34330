"""Visitors walking the shop's funnel, one interaction line at a time.

A pool of concurrent sessions, sized to the current traffic, produces the lines: each new
timestamp goes to a new session (while the pool is below its target size) or advances a
random open one. A session has a visitor (a registered user picked by a power law of
activity, or an anonymous device, new or returning), a traffic source (direct, search, ads,
social, e-mail, referral) that decides its landing page, campaign and referrer, and a state in
a Markov chain over the funnel: home, category and search pages, product pages, cart, checkout.
Some anonymous sessions of registered users sign in midway; from then on their lines carry
both `user_id` and `anonymous_id`.

Lines are built by concatenating JSON fragments rendered once (ids, URLs, user agents,
categories, queries); every string in them is ASCII or UTF-8 without characters JSON needs to
escape, which is what makes plain concatenation correct. This is the hot loop of the generator.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Final, NamedTuple
from urllib.parse import quote_plus

from backfill.generate.catalog import (
    ADJECTIVES,
    BRANDS,
    COLORS,
    SITE,
    Catalog,
    PowerLaw,
    anonymous_id,
    category_paths,
    session_id,
    slug,
    user_id,
)
from backfill.generate.seasonality import SECOND_MS

USER_AGENTS: Final = (
    (30, "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
         "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"),
    (24, "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Chrome/125.0.0.0 Mobile Safari/537.36"),
    (20, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Chrome/125.0.0.0 Safari/537.36"),
    (10, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
         "Gecko) Version/17.4 Safari/605.1.15"),
    (6, "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:126.0) Gecko/20100101 Firefox/126.0"),
    (5, "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36"),
    (3, "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/17.4 Mobile/15E148 Safari/604.1"),
    (2, "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36"),
)  # fmt: skip
LOCALES: Final = (
    (45, "en-US"), (12, "en-GB"), (8, "de-DE"), (7, "fr-FR"), (6, "es-ES"), (6, "ja-JP"),
    (5, "en-CA"), (4, "en-AU"), (3, "pt-BR"), (2, "it-IT"), (2, "nl-NL"),
)  # fmt: skip
CUSTOM_ACTIONS: Final = (  # (weight, custom_action_name, about the product on the page)
    (30, "apply_coupon", False),
    (15, "newsletter_signup", False),
    (25, "size_guide_open", True),
    (5, "store_locator_search", False),
    (10, "back_in_stock_alert", True),
    (15, "chat_opened", False),
)
PROMOS: Final = ("summer-sale", "new-arrivals", "free-shipping", "bestsellers", "gift-guide")
DURATION_BITS: Final = 10  # 1,024 pre-rendered page durations (seconds, log-normal)
REGISTERED_SHARE: Final = 0.45  # sessions by registered users (the rest are anonymous)
SIGN_IN_LATER: Final = 0.3  # registered sessions that start anonymous and sign in midway
RETURNING_VISITOR: Final = 0.3  # anonymous sessions by a device seen before
MEAN_EVENTS: Final = 8.0  # events per session (exponential, so many bounce)
OCTETS: Final = tuple(str(i) for i in range(256))
VISITOR_BASE: Final = 1 << 40  # anonymous visitors' device indexes, apart from users' devices

# Funnel states; each is one interaction type (SIGN_IN is a `custom` line).
(HOME, CATEGORY, SEARCH, PDP, PROMO, IMAGE, ADD, REMOVE, CHECKOUT, REFUND, RATE, LIKE, SHARE,
 COLLECT, CUSTOM, SIGN_IN) = range(16)  # fmt: skip
TYPE_OF: Final = (
    "home_page_view", "category_page_view", "search", "product_detail_page_view",
    "promo_page_view", "product_image_view", "add_to_cart", "remove_from_cart", "checkout",
    "refund", "rate", "like", "share", "add_to_collection", "custom", "custom",
)  # fmt: skip
HEAD: Final = tuple(f'{{"type":"{t}",' for t in TYPE_OF)

Weighted = Sequence[tuple[float, int]]
NEXT: Final[dict[int, Weighted]] = {
    HOME: ((40, CATEGORY), (30, SEARCH), (20, PDP), (5, PROMO), (5, CUSTOM)),
    CATEGORY: ((62, PDP), (15, CATEGORY), (10, SEARCH), (5, HOME), (3, CUSTOM), (5, PROMO)),
    SEARCH: ((68, PDP), (20, SEARCH), (10, CATEGORY), (2, CUSTOM)),
    PROMO: ((60, PDP), (25, CATEGORY), (15, HOME)),
    PDP: ((28, PDP), (18, ADD), (10, IMAGE), (12, CATEGORY), (10, SEARCH), (5, HOME),
          (3, LIKE), (2, SHARE), (4, COLLECT), (3, RATE), (5, CUSTOM)),
    IMAGE: ((35, PDP), (35, ADD), (15, CATEGORY), (15, SEARCH)),
    ADD: ((32, CHECKOUT), (33, PDP), (10, CATEGORY), (10, SEARCH), (10, REMOVE), (5, CUSTOM)),
    REMOVE: ((40, PDP), (30, CHECKOUT), (30, CATEGORY)),
    CHECKOUT: ((40, PDP), (30, HOME), (15, RATE), (15, CUSTOM)),
    REFUND: ((60, HOME), (40, PDP)),
    RATE: ((50, PDP), (20, CATEGORY), (20, SEARCH), (10, ADD)),
    LIKE: ((50, PDP), (20, CATEGORY), (20, SEARCH), (10, ADD)),
    SHARE: ((60, PDP), (40, CATEGORY)),
    COLLECT: ((50, PDP), (20, CATEGORY), (10, SEARCH), (20, ADD)),
    CUSTOM: ((40, PDP), (20, HOME), (20, CATEGORY), (20, SEARCH)),
    SIGN_IN: ((50, HOME), (30, PDP), (20, CATEGORY)),
}  # fmt: skip

# Traffic sources: (weight, referrers, campaign as (source, medium, names) or None, landing).
Campaign = tuple[str, str, tuple[str, ...]]
Source = tuple[float, tuple[str, ...], Campaign | None, Weighted]
SOURCES: Final[tuple[Source, ...]] = (
    (30, ("",), None, ((70, HOME), (15, PDP), (15, CATEGORY))),
    (26, ("https://www.google.com/", "https://www.bing.com/", "https://duckduckgo.com/"), None,
     ((50, PDP), (30, CATEGORY), (20, HOME))),
    (12, ("https://www.google.com/",), ("google", "cpc", ("brand_search", "shopping_feed")),
     ((80, PDP), (20, CATEGORY))),
    (12, ("https://www.instagram.com/", "https://www.facebook.com/", "https://t.co/"),
     ("instagram", "social", ("creator_collab", "summer_lookbook")), ((60, PDP), (40, PROMO))),
    (10, ("",), ("newsletter", "email", ("weekly_digest", "cart_reminder", "summer_sale")),
     ((60, PROMO), (40, PDP))),
    (8, ("https://www.reddit.com/", "https://blog.example.org/best-picks"), None,
     ((70, PDP), (30, HOME))),
    (2, ("",), None, ((100, REFUND),)),  # a registered user reporting a return
)  # fmt: skip


def lottery(pairs: Weighted, bits: int = 8) -> tuple[int, ...]:
    """A table of 2**bits slots shared out by weight: `table[getrandbits(bits)]` draws one
    value in a single C call. Shares are exact to 1/2**bits, plenty for traffic shapes."""
    slots = 1 << bits
    total = sum(w for w, _ in pairs)
    table: list[int] = []
    cumulative = 0.0
    for w, value in pairs:
        cumulative += w * slots / total
        table += [value] * (round(cumulative) - len(table))
    return tuple(table)


class Page(NamedTuple):
    """A page as JSON fragments: the type's fields, the URL, the URL as the next referrer."""

    body: str
    url: str
    as_referrer: str


def page(body: str, url: str) -> Page:
    return Page(body, url, f',"referrer":"{url}"')


class Session:
    """One visit; its string fields are JSON fragments ready to concatenate into a line."""

    __slots__ = ("cart", "ctx", "ids", "landing", "later_ctx", "left", "product", "ref",
                 "referrer", "sign_in", "signed_ids", "state", "url")  # fmt: skip

    def __init__(self, ids: str, ctx: str, later_ctx: str, referrer: str, left: int) -> None:
        self.ids = ids  # '"anonymous_id":"..."' and/or '"user_id":"..."'
        self.ctx = ctx  # context fields after `page`, closing the line: the first line's...
        self.later_ctx = later_ctx  # ...and the later lines'
        self.url = ""  # the current page
        self.ref = ""  # the current page's ',"referrer":"..."', or ""
        self.referrer = referrer  # the same for the next page: the current page's URL
        self.left = left  # events still to come
        self.state = HOME
        self.product = -1  # the product on the current page
        self.cart: dict[int, int] = {}  # product: quantity
        self.sign_in = -1  # the value of `left` when this visitor signs in (-1: never)
        self.signed_ids = ""
        self.landing = ""  # campaign parameters of the landing page URL

    def visit(self, page: Page) -> str:
        """Move to `page`; the page we leave becomes its referrer."""
        self.ref, self.url, self.referrer = self.referrer, page.url, page.as_referrer
        return page.body


class Traffic:
    """Turns timestamps into interaction lines, keeping sessions and visitors consistent."""

    def __init__(self, catalog: Catalog, users: int, rng: random.Random) -> None:
        self._rand = rng.random
        self._bits = rng.getrandbits
        self._catalog = catalog
        self._popular = catalog.popularity.draw
        self._users = PowerLaw(users, 0.8)
        self._visitors = 0  # anonymous devices seen so far
        self._sessions = 0
        self._active: list[Session] = []
        self._target = 1
        self._next = [lottery(NEXT[s]) for s in range(len(TYPE_OF))]
        self._source = lottery([(src[0], i) for i, src in enumerate(SOURCES)])
        self._landing = [lottery(src[3]) for src in SOURCES]
        self._referrers = [
            tuple(f',"referrer":"{url}"' if url else "" for url in src[1]) for src in SOURCES
        ]
        self._lengths = tuple(  # events per visit: exponential, so many visits bounce
            1 + int(rng.expovariate(1.0 / MEAN_EVENTS)) for _ in range(1 << 10)
        )
        self._ua = lottery([(w, i) for i, (w, _) in enumerate(USER_AGENTS)])
        self._ua_fields = [f'"user_agent":"{ua}","truncated_ip":"' for _, ua in USER_AGENTS]
        self._locale = lottery([(w, i) for i, (w, _) in enumerate(LOCALES)])
        self._locale_fields = [f'"locale":"{locale}"' for _, locale in LOCALES]
        self._quantity = lottery([(80, 1), (15, 2), (5, 3)])
        self._rating = lottery([(45, 5), (30, 4), (12, 3), (6, 2), (7, 1)])
        self._custom_action = lottery([(w, i) for i, (w, _, _) in enumerate(CUSTOM_ACTIONS)])
        self._durations = tuple(
            f"{min(rng.lognormvariate(3.0, 1.0), 1800.0):.1f}" for _ in range(1 << DURATION_BITS)
        )
        self._categories = [
            page(f',"category":["{top}","{mid}","{leaf}"],"duration":',
                 f"{SITE}/c/{slug(top, mid, leaf)}")
            for top, mid, leaf in category_paths()
        ]  # fmt: skip
        self._queries = [page(body, url) for body, url in _queries(rng)]
        self._promos = [page(',"duration":', f"{SITE}/promo/{p}") for p in PROMOS]
        self._home = page(',"duration":', SITE + "/")
        self._cart = page("", SITE + "/cart")
        self._confirmation = page("", SITE + "/checkout/confirmation")
        self._orders = page("", SITE + "/account/orders")
        self._products = [
            page(f',"product_ids":["{pid}"],"duration":', url)
            for pid, url in zip(catalog.ids, catalog.url, strict=True)
        ]
        self._product_ids = [f',"product_ids":["{pid}"]' for pid in catalog.ids]
        self._emit: list[Callable[[Session], str]] = [
            self._home_view, self._category, self._search, self._pdp, self._promo,
            self._about_product, self._add, self._remove, self._checkout, self._refund,
            self._rate, self._about_product, self._about_product, self._about_product,
            self._custom, self._sign_in,
        ]  # fmt: skip

    def set_rate(self, per_minute: int) -> None:
        """Open sessions track traffic: one per line a minute keeps visits ~6 minutes long."""
        self._target = max(1, per_minute)

    def lines(self, head: str, offsets: Iterable[int]) -> list[str]:
        """One line per millisecond offset of the minute `head` ("2026-06-01T12:34:").

        The hot loop of the generator: locals only, one call per line for its state.
        """
        bits = self._bits
        active, target = self._active, self._target
        transitions, emit, second_ms = self._next, self._emit, SECOND_MS
        out: list[str] = []
        add = out.append
        for ms in offsets:
            if len(active) < target:
                s = self._open()
                active.append(s)
                index = len(active) - 1
                body = emit[s.state](s)
                ctx, s.ctx = s.ctx, s.later_ctx
                if s.landing:
                    s.url += s.landing
                    s.referrer = ',"referrer":"' + s.url + '"'
            else:
                index = bits(24) % len(active)
                s = active[index]
                if s.left == s.sign_in:
                    s.state, s.ids = SIGN_IN, s.signed_ids
                else:
                    s.state = transitions[s.state][bits(8)]
                body = emit[s.state](s)
                ctx = s.ctx
            add(
                f'{HEAD[s.state]}{s.ids},"timestamp":"{head}{second_ms[ms]}"{body},'
                f'"context":{{"page":{{"url":"{s.url}"{s.ref}}},{ctx}'
            )
            s.left -= 1
            if s.left <= 0:
                active[index] = active[-1]
                active.pop()
        return out

    # -- opening a session -------------------------------------------------------------

    def _open(self) -> Session:
        bits = self._bits
        source = self._source[bits(8)]
        campaign = SOURCES[source][2]
        referrers = self._referrers[source]
        state = self._landing[source][bits(8)]
        ids, signed_ids, sign_in = self._visitor(state == REFUND)
        left = self._lengths[bits(10)]
        first_ctx, later_ctx, landing = self._context(campaign)
        s = Session(ids, first_ctx, later_ctx, referrers[bits(16) % len(referrers)], left)
        s.state, s.landing = state, landing
        if 0 < sign_in < left:
            s.sign_in, s.signed_ids = left - sign_in, signed_ids
        return s

    def _visitor(self, registered: bool) -> tuple[str, str, int]:
        """(ids fragment, ids after signing in, events before signing in or -1)."""
        rand = self._rand
        if registered or rand() < REGISTERED_SHARE:
            u = self._users.draw(rand())
            signed_in = f'"user_id":"{user_id(u)}"'
            if not registered and rand() < SIGN_IN_LATER:
                device = f'"anonymous_id":"{anonymous_id(u)}"'
                return device, f"{signed_in},{device}", 1 + self._bits(2)
            return signed_in, "", -1
        if self._visitors and rand() < RETURNING_VISITOR:
            v = self._bits(40) % self._visitors
        else:
            v = self._visitors
            self._visitors += 1
        return f'"anonymous_id":"{anonymous_id(VISITOR_BASE + v)}"', "", -1

    def _context(self, campaign: Campaign | None) -> tuple[str, str, str]:
        """Context fields after `page`, closing the line, for the session's first line and
        for its later lines; and the landing page's campaign query.

        Device fields, locale and campaign go on the first line only (later lines join it by
        `session_id`), which keeps lines near the 350 bytes the benchmarks assume.
        """
        bits = self._bits
        self._sessions += 1
        ua = self._ua_fields[self._ua[bits(8)]]
        locale = self._locale_fields[self._locale[bits(8)]]
        ip = bits(24)
        ip_text = f"{OCTETS[2 + (ip >> 16) % 221]}.{OCTETS[(ip >> 8) & 0xFF]}.{OCTETS[ip & 0xFF]}.0"
        tail = f',"custom_context":{{"session_id":"{session_id(self._sessions)}"}}}}}}\n'
        extra, landing = "", ""
        if campaign:
            source, medium, names = campaign
            name = names[self._bits(16) % len(names)]
            extra = f',"campaign":{{"name":"{name}","source":"{source}","medium":"{medium}"}}'
            landing = f"?utm_source={source}&utm_medium={medium}&utm_campaign={name}"
        first = f'{ua}{ip_text}",{locale}{extra}{tail}'
        return first, tail[1:], landing

    # -- one method per funnel state: move the session, return the type's own fields ------

    def _duration(self) -> str:
        return self._durations[self._bits(DURATION_BITS)]

    def _home_view(self, s: Session) -> str:
        s.product = -1
        return s.visit(self._home) + self._duration()

    def _category(self, s: Session) -> str:
        s.product = -1
        return s.visit(self._categories[self._bits(16) % len(self._categories)]) + self._duration()

    def _search(self, s: Session) -> str:
        s.product = -1
        return s.visit(self._queries[self._bits(16) % len(self._queries)])

    def _promo(self, s: Session) -> str:
        s.product = -1
        return s.visit(self._promos[self._bits(16) % len(self._promos)]) + self._duration()

    def _pdp(self, s: Session) -> str:
        """The most common line: `visit` and `_duration` inlined."""
        p = s.product = self._popular(self._rand())
        body, s.url, referrer = self._products[p]
        s.ref, s.referrer = s.referrer, referrer
        return body + self._durations[self._bits(DURATION_BITS)]

    def _pdp_instead(self, s: Session) -> str:
        """For a step that needs a product (or a cart) the visitor does not have yet."""
        s.state = PDP
        return self._pdp(s)

    def _about_product(self, s: Session) -> str:
        """product_image_view, like, share, add_to_collection: the product on the page."""
        if s.product < 0:
            return self._pdp_instead(s)
        return self._product_ids[s.product]

    def _add(self, s: Session) -> str:
        if s.product < 0:
            return self._pdp_instead(s)
        qty = self._quantity[self._bits(8)]
        s.cart[s.product] = s.cart.get(s.product, 0) + qty
        return f'{self._product_ids[s.product]},"quantities":[{qty}]'

    def _remove(self, s: Session) -> str:
        if not s.cart:
            return self._pdp_instead(s)
        p = list(s.cart)[self._bits(16) % len(s.cart)]
        del s.cart[p]
        s.visit(self._cart)
        return self._product_ids[p]

    def _checkout(self, s: Session) -> str:
        if not s.cart:
            return self._pdp_instead(s)
        ids = ",".join(f'"{self._catalog.ids[p]}"' for p in s.cart)
        qtys = ",".join(str(q) for q in s.cart.values())
        revenue = sum(self._catalog.prices[p] * q for p, q in s.cart.items())
        s.cart = {}
        s.left = min(s.left, 2)  # after paying, a visit mostly ends
        s.visit(self._confirmation)
        return f',"product_ids":[{ids}],"quantities":[{qtys}],"revenue":{revenue:.2f}'

    def _refund(self, s: Session) -> str:
        s.product = self._popular(self._rand())
        s.visit(self._orders)
        return self._product_ids[s.product]

    def _rate(self, s: Session) -> str:
        if s.product < 0:
            return self._pdp_instead(s)
        return f'{self._product_ids[s.product]},"rating":{self._rating[self._bits(8)]}'

    def _custom(self, s: Session) -> str:
        _, name, with_product = CUSTOM_ACTIONS[self._custom_action[self._bits(8)]]
        if with_product and s.product >= 0:
            return f',"custom_action_name":"{name}"{self._product_ids[s.product]}'
        return f',"custom_action_name":"{name}"'

    def _sign_in(self, s: Session) -> str:
        return ',"custom_action_name":"sign_in"'


def _queries(rng: random.Random) -> list[tuple[str, str]]:
    """Search fields and URLs: 'red sneakers', 'acme headphones', some with a brand filter."""
    leaves = sorted({leaf.lower() for _, _, leaf in category_paths()})
    words = [c.lower() for c, _ in COLORS] + [a.lower() for a in ADJECTIVES]
    words += [b.lower() for b in BRANDS if " " not in b and "&" not in b]
    pool = []
    for _ in range(400):
        keywords = f"{rng.choice(words)} {rng.choice(leaves)}"
        url = f"{SITE}/search?q={quote_plus(keywords)}"
        body = ',"search":{"keywords":"' + keywords + '"'
        if rng.random() < 0.2:
            body += ',"filters":{"brand":["' + rng.choice(BRANDS) + '"]}'
        pool.append((body + "}", url))
    return pool
