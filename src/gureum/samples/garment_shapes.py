"""Garment silhouettes in unit coordinates, one function per class.

Each function draws its class's random variant (sleeve length, neckline, flare, leg width...)
as plain geometry; ``garments.py`` paints it. Keeping the geometry apart lets the painter stay
the same for every class and the shapes stay easy to read and tweak.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

Point = tuple[float, float]
Polygon = list[Point]

CENTRE = 0.5


@dataclass
class Silhouette:
    """A garment as filled shapes, cut-outs, trims, seams and buttons (x right, y down, 0..1)."""

    shapes: list[Polygon] = field(default_factory=list)
    holes: list[Polygon] = field(default_factory=list)
    trims: list[Polygon] = field(default_factory=list)
    seams: list[Polygon] = field(default_factory=list)
    buttons: list[tuple[Point, float]] = field(default_factory=list)


def mirror(poly: Polygon) -> Polygon:
    return [(2 * CENTRE - x, y) for x, y in reversed(poly)]


def both_sides(poly: Polygon) -> list[Polygon]:
    return [poly, mirror(poly)]


def ellipse(
    cx: float, cy: float, rx: float, ry: float, start: float = 0, end: float = 360
) -> Polygon:
    steps = 24
    return [
        (
            cx + rx * math.cos(math.radians(start + (end - start) * i / steps)),
            cy + ry * math.sin(math.radians(start + (end - start) * i / steps)),
        )
        for i in range(steps + 1)
    ]


def hem_curve(left: float, right: float, y: float, sag: float) -> Polygon:
    """A hem from right to left that dips by ``sag`` in the middle (a skirt seen from the front)."""
    steps = 10
    pts = []
    for i in range(steps + 1):
        t = i / steps
        x = right + (left - right) * t
        pts.append((x, y + sag * (1 - (2 * t - 1) ** 2)))
    return pts


def sleeve(shoulder: Point, armpit: Point, length: float, angle_deg: float, cuff: float) -> Polygon:
    """A left sleeve leaving the shoulder ``angle_deg`` below horizontal."""
    a = math.radians(angle_deg)
    end_top = (shoulder[0] - length * math.cos(a), shoulder[1] + length * math.sin(a))
    end_bottom = (end_top[0] + cuff * math.sin(a), end_top[1] + cuff * math.cos(a))
    return [shoulder, end_top, end_bottom, armpit]


def neckline(rng: random.Random, top: float, half_width: float, depth: float) -> Polygon:
    if rng.random() < 0.5:
        return ellipse(CENTRE, top, half_width, depth)
    return [
        (CENTRE - half_width, top - 0.01),
        (CENTRE + half_width, top - 0.01),
        (CENTRE, top + depth * 1.6),
    ]


def shirt(rng: random.Random) -> Silhouette:
    """A tee: wide body, short sleeves sticking out sideways, round or V neck."""
    top = rng.uniform(0.14, 0.2)
    body = rng.uniform(0.18, 0.24)
    hem = rng.uniform(0.8, 0.88)
    drop = rng.uniform(0.03, 0.05)
    shoulder = (CENTRE - body - 0.02, top + drop)
    armpit = (CENTRE - body, top + drop + rng.uniform(0.14, 0.18))
    neck_w = rng.uniform(0.07, 0.1)
    left: Polygon = [
        (CENTRE, top),
        (CENTRE - neck_w, top),
        shoulder,
        armpit,
        (CENTRE - body - rng.uniform(-0.01, 0.02), hem),
        (CENTRE, hem),
    ]
    arm = sleeve(
        shoulder, armpit, rng.uniform(0.11, 0.2), rng.uniform(25, 45), rng.uniform(0.11, 0.14)
    )
    s = Silhouette(shapes=[*both_sides(left), *both_sides(arm)])
    s.holes.append(neckline(rng, top, neck_w, rng.uniform(0.04, 0.08)))
    s.seams.extend(both_sides([shoulder, armpit]))
    if rng.random() < 0.35:
        px, py = CENTRE + body * 0.35, top + 0.16
        s.seams.append([(px, py), (px + 0.09, py), (px + 0.09, py + 0.1), (px, py + 0.1), (px, py)])
    return s


def jacket(rng: random.Random) -> Silhouette:
    """Long sleeves hanging down, a deep V with dark lapels, a buttoned front."""
    top = rng.uniform(0.11, 0.16)
    body = rng.uniform(0.19, 0.24)
    hem = rng.uniform(0.8, 0.9)
    shoulder = (CENTRE - body - 0.03, top + 0.04)
    armpit = (CENTRE - body, top + 0.04 + rng.uniform(0.15, 0.19))
    neck_w = rng.uniform(0.06, 0.09)
    left: Polygon = [
        (CENTRE, top),
        (CENTRE - neck_w, top),
        shoulder,
        armpit,
        (CENTRE - body, hem),
        (CENTRE, hem),
    ]
    arm = sleeve(
        shoulder, armpit, rng.uniform(0.52, 0.62), rng.uniform(66, 76), rng.uniform(0.1, 0.12)
    )
    s = Silhouette(shapes=[*both_sides(left), *both_sides(arm)])
    v_bottom = top + rng.uniform(0.17, 0.26)
    s.holes.append(
        [(CENTRE - neck_w, top - 0.01), (CENTRE + neck_w, top - 0.01), (CENTRE, v_bottom)]
    )
    lapel_w = rng.uniform(0.05, 0.08)
    s.trims.extend(
        both_sides(
            [(CENTRE - neck_w, top), (CENTRE - neck_w - lapel_w, top + 0.11), (CENTRE, v_bottom)]
        )
    )
    s.seams.append([(CENTRE, v_bottom), (CENTRE, hem)])
    s.seams.extend(both_sides([shoulder, armpit]))
    buttons = rng.randint(2, 4)
    for i in range(buttons):
        y = v_bottom + 0.05 + i * (hem - v_bottom - 0.1) / max(buttons - 1, 1)
        s.buttons.append(((CENTRE + 0.025, y), 0.014))
    if rng.random() < 0.6:
        py = rng.uniform(0.6, 0.68)
        s.seams.extend(both_sides([(CENTRE - body + 0.03, py), (CENTRE - 0.07, py)]))
    return s


def dress(rng: random.Random) -> Silhouette:
    """A narrow bodice on straps or cap sleeves, a waist, then a long flared skirt."""
    top = rng.uniform(0.12, 0.18)
    waist = rng.uniform(0.38, 0.46)
    hem = rng.uniform(0.85, 0.93)
    bust = rng.uniform(0.11, 0.15)
    waist_w = rng.uniform(0.08, 0.11)
    hem_w = rng.uniform(0.2, 0.36)
    s = Silhouette()
    s.shapes.append(
        [
            (CENTRE - bust, top),
            (CENTRE + bust, top),
            (CENTRE + waist_w, waist),
            (CENTRE + hem_w, hem),
            *hem_curve(CENTRE - hem_w, CENTRE + hem_w, hem, rng.uniform(0.0, 0.04))[1:-1],
            (CENTRE - hem_w, hem),
            (CENTRE - waist_w, waist),
        ]
    )
    if rng.random() < 0.5:
        strap_x, strap_w = bust * 0.6, 0.025
        s.shapes.extend(
            both_sides(
                [
                    (CENTRE - strap_x - strap_w, top + 0.01),
                    (CENTRE - strap_x - strap_w, top - 0.09),
                    (CENTRE - strap_x + strap_w, top - 0.09),
                    (CENTRE - strap_x + strap_w, top + 0.01),
                ]
            )
        )
    else:
        shoulder = (CENTRE - bust, top)
        s.shapes.extend(
            both_sides(sleeve(shoulder, (CENTRE - bust + 0.01, top + 0.1), 0.07, 30, 0.08))
        )
        s.holes.append(neckline(rng, top, bust * 0.6, rng.uniform(0.03, 0.07)))
    if rng.random() < 0.5:
        belt = rng.uniform(0.02, 0.035)
        s.trims.append(
            [
                (CENTRE - waist_w - 0.005, waist - belt),
                (CENTRE + waist_w + 0.005, waist - belt),
                (CENTRE + waist_w + 0.005, waist + belt),
                (CENTRE - waist_w - 0.005, waist + belt),
            ]
        )
    else:
        s.seams.append([(CENTRE - waist_w, waist), (CENTRE + waist_w, waist)])
    return s


def skirt(rng: random.Random) -> Silhouette:
    """A waistband and a trapezoid below it: mini to midi, pencil to flared, sometimes pleated."""
    top = rng.uniform(0.2, 0.32)
    hem = min(top + rng.uniform(0.38, 0.58), 0.9)
    waist_w = rng.uniform(0.14, 0.2)
    hem_w = waist_w + rng.uniform(0.03, 0.2)
    sag = rng.uniform(0.0, 0.04)
    s = Silhouette()
    s.shapes.append(
        [
            (CENTRE - waist_w, top),
            (CENTRE + waist_w, top),
            *hem_curve(CENTRE - hem_w, CENTRE + hem_w, hem, sag),
        ]
    )
    band = rng.uniform(0.035, 0.055)
    s.trims.append(
        [
            (CENTRE - waist_w, top),
            (CENTRE + waist_w, top),
            (CENTRE + waist_w + 0.005, top + band),
            (CENTRE - waist_w - 0.005, top + band),
        ]
    )
    if rng.random() < 0.4:
        pleats = rng.randint(3, 6)
        for i in range(1, pleats):
            t = i / pleats
            x_top = CENTRE - waist_w + 2 * waist_w * t
            x_hem = CENTRE - hem_w + 2 * hem_w * t
            s.seams.append([(x_top, top + band), (x_hem, hem + sag * (1 - (2 * t - 1) ** 2))])
    if rng.random() < 0.5:
        s.buttons.append(((CENTRE, top + band / 2), 0.013))
    return s


def trousers(rng: random.Random) -> Silhouette:
    """A waistband, a crotch and two legs reaching the bottom, skinny to wide."""
    top = rng.uniform(0.08, 0.14)
    hem = rng.uniform(0.88, 0.94)
    waist_w = rng.uniform(0.16, 0.21)
    crotch = top + rng.uniform(0.24, 0.3)
    flare = rng.uniform(-0.03, 0.06)
    leg = rng.uniform(0.1, 0.17)
    outer = waist_w + flare
    inner = max(outer - leg, 0.04)
    s = Silhouette()
    s.shapes.append(
        [
            (CENTRE - waist_w, top),
            (CENTRE + waist_w, top),
            (CENTRE + outer, hem),
            (CENTRE + inner, hem),
            (CENTRE, crotch),
            (CENTRE - inner, hem),
            (CENTRE - outer, hem),
        ]
    )
    band = rng.uniform(0.035, 0.05)
    s.trims.append(
        [
            (CENTRE - waist_w, top),
            (CENTRE + waist_w, top),
            (CENTRE + waist_w, top + band),
            (CENTRE - waist_w, top + band),
        ]
    )
    s.seams.append([(CENTRE, top + band), (CENTRE, crotch - 0.04)])
    s.seams.extend(
        both_sides(
            [(CENTRE - waist_w + 0.01, top + band + 0.06), (CENTRE - waist_w + 0.07, top + band)]
        )
    )
    if rng.random() < 0.5:
        mid = (outer + inner) / 2
        s.seams.extend(
            both_sides([(CENTRE - waist_w / 2 - 0.01, crotch - 0.05), (CENTRE - mid, hem - 0.02)])
        )
    s.buttons.append(((CENTRE, top + band / 2), 0.012))
    return s


SHAPES: dict[str, Callable[[random.Random], Silhouette]] = {
    "shirt": shirt,
    "jacket": jacket,
    "dress": dress,
    "skirt": skirt,
    "trousers": trousers,
}
