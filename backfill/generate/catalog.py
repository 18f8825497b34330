"""The shop the logs come from: a category tree, products, registered users.

Popularity follows a power law (a few bestsellers, a long tail), as does user activity (a few
heavy users, many light ones). Both are drawn by inverting the continuous power-law CDF, O(1)
per draw and no weight table, then mapped through a fixed permutation so that popular ids are
scattered rather than the first ones.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any, Final

SITE: Final = "https://shop.example.com"

CATEGORY_TREE: Final[dict[str, dict[str, tuple[str, ...]]]] = {
    "Women": {
        "Shoes": ("Sneakers", "Boots", "Sandals", "Heels"),
        "Clothing": ("Dresses", "Tops", "Jeans", "Knitwear"),
        "Accessories": ("Bags", "Jewelry", "Scarves"),
    },
    "Men": {
        "Shoes": ("Sneakers", "Boots", "Loafers"),
        "Clothing": ("Shirts", "Jackets", "Trousers", "T-Shirts"),
        "Accessories": ("Watches", "Belts", "Wallets"),
    },
    "Home": {
        "Kitchen": ("Cookware", "Knives", "Tableware"),
        "Decor": ("Lamps", "Rugs", "Cushions"),
    },
    "Electronics": {
        "Audio": ("Headphones", "Speakers"),
        "Phone Accessories": ("Cases", "Chargers"),
        "Computers": ("Laptops", "Keyboards", "Monitors"),
    },
    "Sports": {"Outdoor": ("Tents", "Backpacks"), "Fitness": ("Yoga Mats", "Dumbbells")},
    "Beauty": {"Skincare": ("Moisturizers", "Serums"), "Fragrance": ("Perfume",)},
}
PRICE_RANGE: Final = {
    "Women": (15.0, 240.0),
    "Men": (15.0, 260.0),
    "Home": (8.0, 180.0),
    "Electronics": (12.0, 1400.0),
    "Sports": (10.0, 320.0),
    "Beauty": (9.0, 120.0),
}
BRANDS: Final = (
    "Northwind", "Acme", "Blue Fjord", "Kestrel", "Mori", "Lumen", "Oakhaven", "Saltmarsh",
    "Tidewater", "Umbra", "Vela", "Wren & Co", "Ardent", "Cobalt", "Fernhill", "Halcyon",
)  # fmt: skip
ADJECTIVES: Final = (
    "Classic", "Everyday", "Lightweight", "Premium", "Vintage", "Organic", "Slim", "Waterproof",
    "Recycled", "Compact", "Heritage", "Urban", "Soft", "Essential", "Pro", "Studio",
)  # fmt: skip
COLORS: Final = (
    ("Black", "BLK"), ("White", "WHT"), ("Navy", "NVY"), ("Red", "RED"), ("Olive", "OLV"),
    ("Grey", "GRY"), ("Sand", "SND"), ("Blue", "BLU"), ("Green", "GRN"), ("Pink", "PNK"),
)  # fmt: skip
FIRST_NAMES: Final = (
    "Ava", "Liam", "Mia", "Noah", "Emma", "Lucas", "Sofia", "Mateo", "Yuki", "Aiko", "Chloe",
    "Omar", "Priya", "Arjun", "Lena", "Jonas", "Zoe", "Ethan", "Amara", "Kenji", "Ines", "Hugo",
)  # fmt: skip
LAST_NAMES: Final = (
    "Smith", "Garcia", "Müller", "Rossi", "Tanaka", "Kim", "Dubois", "Silva", "Nowak", "Cohen",
    "Okafor", "Patel", "Jensen", "Novak", "Larsen", "O'Brien", "Haddad", "Ivanova",
)  # fmt: skip
PLACES: Final = (
    ("Austin", "Texas", "US"), ("Seattle", "Washington", "US"), ("Brooklyn", "New York", "US"),
    ("Denver", "Colorado", "US"), ("Toronto", "Ontario", "CA"), ("London", "England", "GB"),
    ("Manchester", "England", "GB"), ("Berlin", "Berlin", "DE"), ("Lyon", "Auvergne", "FR"),
    ("Osaka", "Osaka", "JP"), ("Sydney", "New South Wales", "AU"), ("Madrid", "Madrid", "ES"),
)  # fmt: skip
LOYALTY_TIERS: Final = ("none", "none", "none", "silver", "silver", "gold", "platinum")


class PowerLaw:
    """Draws indexes 0..n-1 with probability ~ 1/(rank+1)**exponent, rank scattered over ids."""

    __slots__ = ("_inv", "_n", "_span", "_step")

    def __init__(self, n: int, exponent: float) -> None:
        if exponent == 1.0:
            exponent = 1.0001  # the closed form below divides by 1 - exponent
        self._n = n
        self._inv = 1.0 / (1.0 - exponent)
        self._span = (n + 1.0) ** (1.0 - exponent) - 1.0
        self._step = _coprime_step(n)

    def draw(self, u: float) -> int:
        """The index for a uniform `u` in [0, 1). (Rounding may give rank n: it wraps to 0.)"""
        return ((int((1.0 + u * self._span) ** self._inv) - 1) * self._step) % self._n


def _coprime_step(n: int) -> int:
    step = max(1, int(n * 0.618034)) | 1
    while math.gcd(step, n) != 1:
        step += 2
    return step


def category_paths() -> list[tuple[str, str, str]]:
    return [
        (top, mid, leaf)
        for top, mids in CATEGORY_TREE.items()
        for mid, leaves in mids.items()
        for leaf in leaves
    ]


def slug(*parts: str) -> str:
    return "/".join(p.lower().replace(" & ", "-").replace(" ", "-") for p in parts)


def mix(x: int, bits: int) -> int:
    """A bijection on `bits`-bit ints: distinct indexes give distinct, random-looking ids.
    (An xor, an odd multiplier and a xorshift are each invertible.)"""
    x = ((x ^ 0x632BE59BD9B4E019) * 0x9E3779B97F4A7C15) & ((1 << bits) - 1)
    return x ^ (x >> (bits // 2))


@functools.lru_cache(maxsize=1 << 16)
def user_id(index: int) -> str:
    """Cached: heavy users come back all the time."""
    return "cust_" + mix(index, 32).to_bytes(4, "big").hex()


def anonymous_id(index: int) -> str:
    """A device id as analytics SDKs keep in a first-party cookie."""
    return "anon-" + mix(index, 64).to_bytes(8, "big").hex()


def session_id(index: int) -> str:
    return mix(index, 40).to_bytes(5, "big").hex()


class Catalog:
    """The products: ids (variants of a group share its price and category), and their records."""

    def __init__(self, count: int, rng: random.Random) -> None:
        paths = category_paths()
        self.paths = paths
        self.ids: list[str] = []
        self.groups: list[str] = []
        self.prices: list[float] = []
        self.path_of: list[int] = []
        group = 0
        while len(self.ids) < count:
            group += 1
            path_index = rng.randrange(len(paths))
            low, high = PRICE_RANGE[paths[path_index][0]]
            price = round(math.exp(rng.uniform(math.log(low), math.log(high))), 0) - 0.01
            for _name, code in rng.sample(COLORS, rng.choice((1, 1, 2, 3, 4))):
                if len(self.ids) == count:
                    break
                self.ids.append(f"SKU-{group:06d}-{code}")
                self.groups.append(f"SKU-{group:06d}")
                self.prices.append(price)
                self.path_of.append(path_index)
        self.popularity = PowerLaw(count, 0.95)
        self.url = [f"{SITE}/p/{pid}" for pid in self.ids]

    def records(self, start: date, rng: random.Random) -> Iterator[dict[str, Any]]:
        """One ProductRecord per product; created before the period starts."""
        for i, pid in enumerate(self.ids):
            top, mid, leaf = self.paths[self.path_of[i]]
            color = pid.rsplit("-", 1)[1]
            color_name = next(name for name, code in COLORS if code == color)
            brand = BRANDS[(i * 7 + len(leaf)) % len(BRANDS)]
            adjective = ADJECTIVES[rng.randrange(len(ADJECTIVES))]
            title = f"{brand} {adjective} {leaf.rstrip('s')} - {color_name}"
            record: dict[str, Any] = {
                "product_id": pid,
                "product_group_id": self.groups[i],
                "title": title,
                "description": f"{adjective} {leaf.lower()} by {brand}, in {color_name.lower()}.",
                "categories": [[top, mid, leaf]],
                "tags": [color_name.lower(), adjective.lower()],
                "brand": brand,
                "color": color_name,
                "original_price": self.prices[i],
                "availability": "IN_STOCK" if rng.random() < 0.9 else "OUT_OF_STOCK",
                "condition": "NEW",
                "url": self.url[i],
                "cover_image": f"https://cdn.example.com/img/{pid}.jpg",
                "created_at": (start - timedelta(days=rng.randrange(30, 900))).isoformat(),
                "rating": round(rng.triangular(2.5, 5.0, 4.4), 1),
                "custom_attributes": {
                    "num_reviews": int(rng.paretovariate(1.1)) - 1,
                    "eco_friendly": adjective in ("Organic", "Recycled"),
                },
            }
            if rng.random() < 0.25:
                record["sale_price"] = round(self.prices[i] * rng.choice((0.7, 0.8, 0.9)), 2)
            yield record


def user_records(count: int, start: date, rng: random.Random) -> Iterator[dict[str, Any]]:
    """One UserRecord per registered user, all signed up before the period starts."""
    for i in range(count):
        city, state, country = PLACES[rng.randrange(len(PLACES))]
        created = start - timedelta(days=rng.randrange(1, 1500))
        yield {
            "user_id": user_id(i),
            "name": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
            "age": rng.randrange(18, 80),
            "gender": rng.choice(("F", "M", "F", "M", "X")),
            "city": city,
            "state": state,
            "country": country,
            "created_at": created.isoformat(),
            "custom_attributes": {
                "loyalty_tier": rng.choice(LOYALTY_TIERS),
                "newsletter": rng.random() < 0.4,
            },
        }
