"""Textured side-view sprites for the synthetic street world.

Vehicles, people, cows and street furniture are drawn with OpenCV at 3x and reduced with area
averaging (clean anti-aliased edges), then given a fine noise texture so that dense optical flow
has something to lock on to inside each shape. Colours come from a style palette: ``source`` is
muted (greys, beiges, dull paint), ``target`` is vivid (saturated paint, saris, painted autos).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import cv2
import numpy as np

SUPERSAMPLE = 3

# Width / height of each sprite's box: a car is long and low, a pedestrian tall and thin.
ASPECT = {
    "car": 2.3,
    "auto_rickshaw": 1.35,
    "two_wheeler": 1.05,
    "pedestrian": 0.36,
    "cow": 1.55,
    "stall": 1.25,
    "sign": 0.55,
    "pole": 0.06,
}
# Vehicles seen from the front (coming toward the camera) or back (going away).
FRONT_ASPECT = {"car": 1.25, "auto_rickshaw": 0.95, "two_wheeler": 0.55}
VIEWS = ("side", "front", "back")


@dataclass(frozen=True)
class Sprite:
    """A drawable: colour, coverage and the ground-contact point it is placed by."""

    rgb: np.ndarray  # (h, w, 3) float32 in [0, 255]
    alpha: np.ndarray  # (h, w) float32 in [0, 1]
    anchor: tuple[float, float]  # (x, y) in sprite pixels: bottom centre, where it touches the ground

    @property
    def area(self) -> float:
        return float(self.alpha.sum())


class Palette:
    """Colour choices for one style; every draw goes through the given generator."""

    def __init__(self, style: str, rng: np.random.Generator):
        if style not in ("source", "target"):
            raise ValueError(f"style must be 'source' or 'target', got {style!r}")
        self.style = style
        self.rng = rng

    @property
    def vivid(self) -> bool:
        return self.style == "target"

    def hsv(self, h: float, s: float, v: float) -> tuple[int, int, int]:
        r, g, b = colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
        return int(r * 255), int(g * 255), int(b * 255)

    def any_colour(self) -> tuple[int, int, int]:
        rng = self.rng
        if self.vivid:
            return self.hsv(rng.random(), rng.uniform(0.55, 0.95), rng.uniform(0.6, 1.0))
        return self.hsv(rng.random(), rng.uniform(0.04, 0.25), rng.uniform(0.3, 0.8))

    def vehicle(self) -> tuple[int, int, int]:
        rng = self.rng
        if self.vivid and rng.random() < 0.7:
            return self.any_colour()
        grey = rng.choice([235, 200, 160, 110, 60, 35])
        tint = rng.integers(-8, 9, size=3)
        return tuple(int(np.clip(grey + t, 0, 255)) for t in tint)

    def auto_body(self) -> tuple[int, int, int]:
        # Indian autos are mostly yellow-green or black-yellow; the muted world gets dull olive.
        if self.vivid:
            return [(250, 205, 20), (40, 170, 60), (30, 150, 90), (245, 180, 0)][self.rng.integers(4)]
        return self.hsv(0.18, 0.25, 0.55)

    def clothes(self) -> tuple[int, int, int]:
        if self.vivid:
            return self.any_colour()
        return self.hsv(self.rng.random(), self.rng.uniform(0.05, 0.3), self.rng.uniform(0.15, 0.6))

    def skin(self) -> tuple[int, int, int]:
        return self.hsv(0.07, self.rng.uniform(0.35, 0.6), self.rng.uniform(0.35, 0.75))

    def cow(self) -> tuple[int, int, int]:
        return [(235, 232, 225), (200, 195, 185), (120, 80, 50), (90, 70, 60)][self.rng.integers(4)]

    def wall(self) -> tuple[int, int, int]:
        rng = self.rng
        if self.vivid:
            return self.hsv(rng.random(), rng.uniform(0.3, 0.75), rng.uniform(0.6, 0.95))
        return self.hsv(rng.uniform(0.05, 0.15), rng.uniform(0.03, 0.18), rng.uniform(0.5, 0.8))


def build_sprite(
    category: str, height_px: float, rng: np.random.Generator, palette: Palette, facing: int = 1,
    view: str = "side",
) -> Sprite:
    """Draw one ``category`` sprite ``height_px`` tall.

    ``view="side"`` faces right (``facing=1``) or left (-1); vehicles also have ``"front"`` (coming
    toward the camera) and ``"back"`` (going away); other categories look the same from any side.
    """
    if category not in ASPECT:
        raise ValueError(f"unknown sprite category {category!r}; known: {sorted(ASPECT)}")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    end_on = view != "side" and category in FRONT_ASPECT
    h = max(4, int(round(height_px)))
    w = max(3, int(round(height_px * (FRONT_ASPECT[category] if end_on else ASPECT[category]))))
    hs, ws = h * SUPERSAMPLE, w * SUPERSAMPLE
    img = np.zeros((hs, ws, 3), np.uint8)
    mask = np.zeros((hs, ws), np.uint8)
    if end_on:
        _END_ON_DRAWERS[category](_Canvas(img, mask), rng, palette, view == "front")
    else:
        _DRAWERS[category](_Canvas(img, mask), rng, palette)
    if facing < 0:
        img, mask = img[:, ::-1], mask[:, ::-1]
    rgb = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    alpha = cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    rgb = _texture(rgb, alpha, rng, strength=0.14 if category != "pole" else 0.08)
    return Sprite(rgb=rgb, alpha=alpha, anchor=(w / 2.0, float(h)))


def _texture(rgb: np.ndarray, alpha: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    # Multiplicative grain that moves with the object: Farnebaeck flow needs texture inside shapes.
    noise = cv2.GaussianBlur(rng.standard_normal(alpha.shape).astype(np.float32), (0, 0), 0.7)
    noise /= max(float(noise.std()), 1e-6)
    out = rgb * (1.0 + strength * noise)[..., None]
    return np.clip(out, 0, 255).astype(np.float32)


class _Canvas:
    """Draw in unit coordinates (x, y in [0, 1] of the sprite box) onto colour + coverage."""

    def __init__(self, img: np.ndarray, mask: np.ndarray):
        self.img, self.mask = img, mask
        self.h, self.w = mask.shape

    def _pt(self, x: float, y: float) -> tuple[int, int]:
        return int(round(x * (self.w - 1))), int(round(y * (self.h - 1)))

    def poly(self, pts, colour, cover: bool = True) -> None:
        arr = np.array([self._pt(x, y) for x, y in pts], np.int32)
        cv2.fillPoly(self.img, [arr], colour)
        if cover:
            cv2.fillPoly(self.mask, [arr], 255)

    def rect(self, x0, y0, x1, y1, colour, cover: bool = True) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], colour, cover)

    def circle(self, x, y, r_h, colour, cover: bool = True) -> None:
        # radius in units of the box height, so wheels stay round whatever the aspect.
        c = self._pt(x, y)
        r = max(1, int(round(r_h * self.h)))
        cv2.circle(self.img, c, r, colour, -1)
        if cover:
            cv2.circle(self.mask, c, r, 255, -1)

    def ellipse(self, x, y, ax, ay, colour, angle: float = 0.0, cover: bool = True) -> None:
        c = self._pt(x, y)
        axes = (max(1, int(round(ax * self.w))), max(1, int(round(ay * self.h))))
        cv2.ellipse(self.img, c, axes, angle, 0, 360, colour, -1)
        if cover:
            cv2.ellipse(self.mask, c, axes, angle, 0, 360, 255, -1)

    def hstripes(self, x0, y0, x1, y1, colour, period: float, duty: float = 0.5) -> None:
        # Paint stripes only where something is already drawn (texture, not new coverage).
        y = y0
        while y < y1:
            ya, yb = self._pt(x0, y), self._pt(x1, min(y1, y + period * duty))
            region = np.zeros_like(self.mask)
            cv2.rectangle(region, ya, yb, 255, -1)
            self.img[(region > 0) & (self.mask > 0)] = colour
            y += period

    def vstripes(self, x0, y0, x1, y1, colour, period: float, duty: float = 0.5) -> None:
        x = x0
        while x < x1:
            pa, pb = self._pt(x, y0), self._pt(min(x1, x + period * duty), y1)
            region = np.zeros_like(self.mask)
            cv2.rectangle(region, pa, pb, 255, -1)
            self.img[(region > 0) & (self.mask > 0)] = colour
            x += period


def _darker(c, f: float = 0.6):
    return tuple(int(v * f) for v in c)


def _lighter(c, f: float = 0.45):
    return tuple(int(v + (255 - v) * f) for v in c)


WHEEL = (25, 25, 28)
HUB = (150, 150, 155)
GLASS = (60, 80, 95)


def _draw_car(cv: _Canvas, rng: np.random.Generator, pal: Palette) -> None:
    body = pal.vehicle()
    cv.poly([(0.02, 0.5), (0.22, 0.44), (0.33, 0.12), (0.7, 0.12), (0.83, 0.42), (0.98, 0.52),
             (0.98, 0.82), (0.02, 0.82)], body)
    cv.poly([(0.36, 0.19), (0.51, 0.19), (0.51, 0.42), (0.29, 0.42)], GLASS)
    cv.poly([(0.54, 0.19), (0.68, 0.19), (0.78, 0.42), (0.54, 0.42)], GLASS)
    cv.rect(0.04, 0.58, 0.96, 0.62, _darker(body, 0.7))  # side trim
    cv.rect(0.93, 0.53, 0.98, 0.6, (250, 240, 200))  # headlight
    cv.rect(0.02, 0.54, 0.05, 0.62, (190, 30, 30))  # tail light
    for x in (0.21, 0.79):
        cv.circle(x, 0.8, 0.19, WHEEL)
        cv.circle(x, 0.8, 0.08, HUB)


def _draw_auto(cv: _Canvas, rng: np.random.Generator, pal: Palette) -> None:
    body = pal.auto_body()
    canopy = (20, 20, 22) if pal.vivid else (70, 70, 65)
    cv.poly([(0.08, 0.06), (0.62, 0.04), (0.78, 0.14), (0.8, 0.4), (0.08, 0.4)], canopy)
    cv.poly([(0.04, 0.38), (0.82, 0.38), (0.97, 0.5), (0.97, 0.8), (0.04, 0.8)], body)
    cv.rect(0.3, 0.16, 0.62, 0.52, (30, 28, 26))  # open passenger side
    cv.hstripes(0.04, 0.62, 0.97, 0.8, _darker(body, 0.55), period=0.09, duty=0.4)
    cv.rect(0.9, 0.5, 0.97, 0.58, (250, 240, 200))
    for x in (0.2, 0.82):
        cv.circle(x, 0.83, 0.16, WHEEL)
        cv.circle(x, 0.83, 0.07, HUB)


def _draw_two_wheeler(cv: _Canvas, rng: np.random.Generator, pal: Palette) -> None:
    body = pal.vehicle() if not pal.vivid else pal.any_colour()
    shirt, skin = pal.clothes(), pal.skin()
    for x in (0.2, 0.8):
        cv.circle(x, 0.8, 0.18, WHEEL)
        cv.circle(x, 0.8, 0.07, HUB)
    cv.poly([(0.22, 0.62), (0.72, 0.58), (0.86, 0.66), (0.74, 0.74), (0.3, 0.74)], body)
    cv.rect(0.68, 0.38, 0.74, 0.62, _darker(body))  # handlebar column
    cv.poly([(0.38, 0.18), (0.6, 0.18), (0.64, 0.58), (0.34, 0.58)], shirt)  # rider torso
    cv.hstripes(0.34, 0.2, 0.64, 0.58, _darker(shirt, 0.5), period=0.1, duty=0.35)
    cv.poly([(0.58, 0.24), (0.74, 0.38), (0.7, 0.42), (0.56, 0.32)], shirt)  # arm
    cv.poly([(0.4, 0.55), (0.62, 0.55), (0.6, 0.76), (0.54, 0.76)], (40, 40, 60))  # leg
    helmet = rng.random() < (0.3 if pal.vivid else 0.9)
    cv.circle(0.52, 0.1, 0.1, pal.any_colour() if helmet else skin)
    if not helmet:
        cv.circle(0.5, 0.06, 0.07, (25, 20, 18))


def _draw_pedestrian(cv: _Canvas, rng: np.random.Generator, pal: Palette) -> None:
    shirt, skin = pal.clothes(), pal.skin()
    long_dress = pal.vivid and rng.random() < 0.4
    if long_dress:  # sari / kurta: one long garment
        cv.poly([(0.22, 0.18), (0.78, 0.18), (0.9, 0.97), (0.1, 0.97)], shirt)
        cv.vstripes(0.1, 0.3, 0.9, 0.97, _lighter(shirt), period=0.22, duty=0.35)
    else:
        trousers = pal.clothes() if pal.vivid else (45, 45, 55)
        cv.rect(0.22, 0.52, 0.48, 0.98, trousers)
        cv.rect(0.52, 0.52, 0.78, 0.98, _darker(trousers, 0.8))
        cv.rect(0.15, 0.18, 0.85, 0.56, shirt)
        cv.hstripes(0.15, 0.2, 0.85, 0.56, _darker(shirt, 0.55), period=0.07, duty=0.4)
    cv.rect(0.04, 0.22, 0.16, 0.5, skin)  # arms
    cv.rect(0.84, 0.22, 0.96, 0.5, skin)
    cv.ellipse(0.5, 0.09, 0.26, 0.08, skin)
    cv.ellipse(0.5, 0.05, 0.26, 0.045, (25, 20, 18))  # hair


def _draw_cow(cv: _Canvas, rng: np.random.Generator, pal: Palette) -> None:
    coat = pal.cow()
    for x in (0.22, 0.32, 0.66, 0.76):
        cv.rect(x - 0.035, 0.5, x + 0.035, 0.98, _darker(coat, 0.85))
    cv.ellipse(0.48, 0.42, 0.36, 0.22, coat)
    cv.ellipse(0.62, 0.22, 0.08, 0.1, coat)  # hump
    cv.poly([(0.78, 0.28), (0.9, 0.2), (0.99, 0.42), (0.93, 0.5), (0.82, 0.44)], coat)  # head
    cv.poly([(0.86, 0.2), (0.88, 0.04), (0.9, 0.2)], (90, 80, 70))  # horn
    cv.rect(0.08, 0.35, 0.11, 0.75, _darker(coat))  # tail
    spot = _darker(coat, 0.55)
    for _ in range(rng.integers(2, 6)):
        cv.ellipse(rng.uniform(0.25, 0.7), rng.uniform(0.3, 0.55), rng.uniform(0.03, 0.08),
                   rng.uniform(0.04, 0.09), spot, angle=float(rng.uniform(0, 180)), cover=False)


def _draw_stall(cv: _Canvas, rng: np.random.Generator, pal: Palette) -> None:
    wood = (120, 85, 50) if pal.vivid else (110, 100, 90)
    canopy = pal.any_colour()
    cv.poly([(0.0, 0.12), (1.0, 0.12), (0.9, 0.0), (0.1, 0.0)], canopy)
    cv.vstripes(0.0, 0.0, 1.0, 0.12, _lighter(canopy, 0.6), period=0.16, duty=0.5)
    cv.rect(0.1, 0.12, 0.14, 0.5, wood)
    cv.rect(0.86, 0.12, 0.9, 0.5, wood)
    cv.rect(0.04, 0.48, 0.96, 0.78, wood)
    for _ in range(14 if pal.vivid else 5):  # goods on the cart
        cv.circle(rng.uniform(0.1, 0.9), rng.uniform(0.44, 0.52), 0.05, pal.any_colour())
    cv.circle(0.25, 0.88, 0.1, WHEEL)
    cv.circle(0.75, 0.88, 0.1, WHEEL)


def _draw_sign(cv: _Canvas, rng: np.random.Generator, pal: Palette) -> None:
    board = pal.any_colour() if pal.vivid else (40, 80, 150)
    cv.rect(0.45, 0.3, 0.55, 1.0, (110, 110, 115))
    cv.rect(0.0, 0.0, 1.0, 0.36, board)
    ink = (250, 250, 250) if sum(board) < 400 else (20, 20, 20)
    for y in (0.08, 0.2):  # "text" lines
        x = 0.1
        while x < 0.85:
            ln = rng.uniform(0.08, 0.22)
            cv.rect(x, y, min(0.9, x + ln), y + 0.07, ink, cover=False)
            x += ln + 0.06


def _draw_pole(cv: _Canvas, rng: np.random.Generator, pal: Palette) -> None:
    metal = (80, 80, 85) if pal.vivid else (120, 120, 125)
    cv.rect(0.15, 0.0, 0.85, 1.0, metal)
    cv.rect(0.0, 0.96, 1.0, 1.0, _darker(metal))


_DRAWERS = {
    "car": _draw_car,
    "auto_rickshaw": _draw_auto,
    "two_wheeler": _draw_two_wheeler,
    "pedestrian": _draw_pedestrian,
    "cow": _draw_cow,
    "stall": _draw_stall,
    "sign": _draw_sign,
    "pole": _draw_pole,
}


HEADLIGHT = (250, 240, 200)
TAILLIGHT = (200, 30, 30)


def _draw_car_end(cv: _Canvas, rng: np.random.Generator, pal: Palette, front: bool) -> None:
    body = pal.vehicle()
    lamp = HEADLIGHT if front else TAILLIGHT
    cv.rect(0.03, 0.78, 0.2, 1.0, WHEEL)
    cv.rect(0.8, 0.78, 0.97, 1.0, WHEEL)
    cv.poly([(0.2, 0.06), (0.8, 0.06), (0.92, 0.42), (0.08, 0.42)], body)  # cabin
    cv.poly([(0.25, 0.12), (0.75, 0.12), (0.84, 0.4), (0.16, 0.4)], GLASS)  # wind/rear screen
    cv.rect(0.02, 0.4, 0.98, 0.86, body)
    cv.rect(0.06, 0.5, 0.24, 0.6, lamp)
    cv.rect(0.76, 0.5, 0.94, 0.6, lamp)
    cv.rect(0.32, 0.52, 0.68, 0.66, (30, 30, 32) if front else _darker(body))  # grille / boot
    cv.hstripes(0.32, 0.52, 0.68, 0.66, (90, 90, 95), period=0.05, duty=0.4)
    cv.rect(0.02, 0.74, 0.98, 0.82, _darker(body, 0.5))  # bumper
    cv.rect(0.4, 0.68, 0.6, 0.73, (235, 235, 220))  # number plate


def _draw_auto_end(cv: _Canvas, rng: np.random.Generator, pal: Palette, front: bool) -> None:
    body = pal.auto_body()
    canopy = (20, 20, 22) if pal.vivid else (70, 70, 65)
    lamp = HEADLIGHT if front else TAILLIGHT
    cv.poly([(0.12, 0.04), (0.88, 0.04), (0.96, 0.14), (0.96, 0.45), (0.04, 0.45), (0.04, 0.14)], canopy)
    cv.rect(0.18, 0.12, 0.82, 0.4, GLASS if front else (35, 32, 30))
    cv.poly([(0.04, 0.43), (0.96, 0.43), (0.9, 0.82), (0.1, 0.82)], body)
    cv.hstripes(0.04, 0.6, 0.96, 0.82, _darker(body, 0.55), period=0.08, duty=0.4)
    if front:
        cv.circle(0.5, 0.55, 0.06, lamp)
        cv.rect(0.42, 0.8, 0.58, 1.0, WHEEL)
    else:
        cv.rect(0.1, 0.52, 0.22, 0.58, lamp)
        cv.rect(0.78, 0.52, 0.9, 0.58, lamp)
        cv.rect(0.06, 0.8, 0.2, 1.0, WHEEL)
        cv.rect(0.8, 0.8, 0.94, 1.0, WHEEL)


def _draw_two_wheeler_end(cv: _Canvas, rng: np.random.Generator, pal: Palette, front: bool) -> None:
    body = pal.any_colour() if pal.vivid else pal.vehicle()
    shirt, skin = pal.clothes(), pal.skin()
    cv.rect(0.4, 0.66, 0.6, 1.0, WHEEL)
    cv.poly([(0.3, 0.5), (0.7, 0.5), (0.64, 0.72), (0.36, 0.72)], body)
    cv.poly([(0.2, 0.14), (0.8, 0.14), (0.86, 0.52), (0.14, 0.52)], shirt)  # rider
    cv.hstripes(0.14, 0.16, 0.86, 0.52, _darker(shirt, 0.5), period=0.08, duty=0.35)
    cv.rect(0.0, 0.4, 1.0, 0.45, (40, 40, 45))  # handlebar
    cv.circle(0.5, 0.58, 0.05, HEADLIGHT if front else TAILLIGHT)
    helmet = rng.random() < (0.3 if pal.vivid else 0.9)
    cv.ellipse(0.5, 0.08, 0.24, 0.08, pal.any_colour() if helmet else skin)


_END_ON_DRAWERS = {
    "car": _draw_car_end,
    "auto_rickshaw": _draw_auto_end,
    "two_wheeler": _draw_two_wheeler_end,
}
