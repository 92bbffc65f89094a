"""Draw one SynthPedes photo: a person with their outfit, seen by one camera.

Drawn with PIL at twice the output size and downsampled (anti-aliasing), then the camera's
nuisances are applied: lighting cast, blur, sensor noise. The drawing follows the visibility rules
of ``world.visibility`` (glasses are not drawn from the back, a backpack is only straps from the
front, a coat hides the belt, occluders and crops hide legs and shoes).
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tools.attributes import NONE

from .world import CAMERAS, Shot, rng_for

WIDTH, HEIGHT = 128, 256
_SS = 2  # supersampling factor
W, H = WIDTH * _SS, HEIGHT * _SS

BASE_RGB: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 30),
    "white": (236, 236, 232),
    "grey": (132, 132, 134),
    "beige": (214, 196, 160),
    "brown": (118, 76, 44),
    "red": (200, 30, 36),
    "orange": (236, 124, 28),
    "pink": (236, 140, 176),
    "yellow": (236, 212, 40),
    "green": (48, 140, 62),
    "blue": (52, 110, 216),
    "navy": (26, 36, 96),
    "purple": (116, 50, 150),
}
HAIR_RGB = {"black": (20, 18, 18), "brown": (92, 58, 30), "blonde": (214, 182, 110), "grey": (158, 156, 152)}
SKIN_RGB = [(241, 204, 176), (226, 180, 146), (198, 146, 108), (160, 110, 76), (118, 80, 56), (250, 218, 196)]


def jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: float = 1.0) -> tuple[int, int, int]:
    """A shade of a named colour: small changes in hue, saturation and value."""
    r, g, b = (c / 255 for c in rgb)
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    h = (h + rng.normal(0, 0.012 * amount)) % 1.0
    s = float(np.clip(s * (1 + rng.normal(0, 0.08 * amount)), 0, 1))
    v = float(np.clip(v * (1 + rng.normal(0, 0.07 * amount)), 0, 1))
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in rgb)  # type: ignore[return-value]


def mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return tuple(int(x * (1 - t) + y * t) for x, y in zip(a, b))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# backgrounds


def draw_background(img: Image.Image, camera: int, rng: np.random.Generator) -> None:
    d = ImageDraw.Draw(img)
    kind = CAMERAS[camera]["background"]
    horizon = int(H * rng.uniform(0.52, 0.62))
    if kind == "street":
        wall = mix((150, 140, 128), (110, 118, 130), camera / 5)
        d.rectangle([0, 0, W, horizon], fill=jitter(wall, rng, 0.5))
        for wx in range(int(rng.integers(-20, 10)), W, 60):
            for wy in range(20, horizon - 40, 70):
                d.rectangle([wx + 10, wy, wx + 44, wy + 44], fill=(70, 84, 100), outline=(60, 60, 60), width=3)
        d.rectangle([0, horizon, W, H], fill=jitter((122, 122, 118), rng, 0.5))
        d.line([0, horizon + 40, W, horizon + 40], fill=(96, 96, 94), width=4)
    elif kind == "park":
        d.rectangle([0, 0, W, horizon], fill=jitter((150, 190, 220), rng, 0.5))
        for tx in range(int(rng.integers(-40, 0)), W + 40, 90):
            ty = horizon - int(rng.integers(60, 140))
            d.rectangle([tx + 30, ty + 40, tx + 44, horizon], fill=(90, 64, 40))
            d.ellipse([tx, ty - 40, tx + 76, ty + 60], fill=jitter((56, 112, 52), rng, 0.7))
        d.rectangle([0, horizon, W, H], fill=jitter((96, 150, 70), rng, 0.5))
        d.rectangle([0, horizon + 60, W, horizon + 100], fill=(176, 160, 130))
    elif kind == "indoor":
        d.rectangle([0, 0, W, horizon], fill=jitter((214, 206, 188), rng, 0.4))
        d.rectangle([int(W * 0.6), int(horizon * 0.25), W, horizon], fill=(150, 120, 90))
        d.rectangle([0, horizon, W, H], fill=jitter((170, 150, 120), rng, 0.4))
        for ty in range(horizon, H, 40):
            d.line([0, ty, W, ty], fill=(140, 120, 96), width=2)
    else:  # crosswalk
        d.rectangle([0, 0, W, horizon], fill=jitter((168, 160, 150), rng, 0.5))
        d.rectangle([0, horizon, W, H], fill=jitter((62, 62, 66), rng, 0.4))
        for sy in range(horizon + 20, H, 56):
            d.rectangle([0, sy, W, sy + 24], fill=(222, 222, 216))


# ---------------------------------------------------------------------------------------------
# the person


class Figure:
    """Coordinates of one person: relative units (0 = top of head, 1 = soles) mapped to pixels."""

    def __init__(self, cx: float, top: float, height: float, attrs: dict, shot: Shot, rng: np.random.Generator,
                 skin: tuple[int, int, int]):
        self.cx, self.top, self.h = cx, top, height
        self.a, self.shot, self.rng = attrs, shot, rng
        self.view = shot.viewpoint
        self.facing = shot.facing
        self.female = attrs["gender"] == "female"
        self.skin = skin
        self.colours = {slot: jitter(BASE_RGB[attrs[slot]], rng)
                        for slot in ("upper_color", "lower_color", "shoes_color", "hand_object_color",
                                     "backpack_color", "bag_color", "hat_color")
                        if attrs.get(slot) not in (None, NONE)}
        self.hair = jitter(HAIR_RGB[attrs["hair_color"]], rng, 0.6)
        swing = {"walking": 0.34, "running": 0.62, "standing": 0.0}[shot.action]
        s = math.sin(2 * math.pi * shot.phase)
        # a stride is never caught with the legs together: walking and running always show a step
        s = math.copysign(0.6 + 0.4 * abs(s), s) if shot.action != "standing" else 0.0
        self.leg_angle = swing * s
        self.arm_angle = -swing * s * (1.2 if shot.action == "running" else 0.9)
        side = self.view == "side"
        # body shape is the gender cue that survives a back view and short hair
        self.shoulder = (0.08 if self.female else 0.11) * (0.55 if side else 1.0)
        self.waist = (0.062 if self.female else 0.088) * (0.6 if side else 1.0)
        self.hip = (0.1 if self.female else 0.084) * (0.62 if side else 1.0)

    def p(self, x: float, y: float) -> tuple[float, float]:
        return self.cx + x * self.h, self.top + y * self.h

    def poly(self, d: ImageDraw.ImageDraw, pts, fill, outline=None) -> None:
        d.polygon([self.p(x, y) for x, y in pts], fill=fill, outline=outline)

    def ellipse(self, d: ImageDraw.ImageDraw, x0, y0, x1, y1, fill, outline=None, width=1) -> None:
        a, b = self.p(x0, y0), self.p(x1, y1)
        d.ellipse([min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1])], fill=fill,
                  outline=outline, width=width)

    def limb(self, d: ImageDraw.ImageDraw, start, angle, length, width, fill) -> tuple[float, float]:
        """A limb from ``start`` swinging by ``angle`` (radians from vertical). Returns its end."""
        x0, y0 = start
        if self.view == "side":
            dx = math.sin(angle) * length * self.facing
        else:  # seen from the front or back, a swing mostly shortens the limb and opens it a little
            dx = math.sin(angle) * length * 0.35
        dy = math.cos(angle) * length
        x1, y1 = x0 + dx, y0 + dy
        nx, ny = -(y1 - y0), (x1 - x0)
        norm = math.hypot(nx, ny) or 1.0
        nx, ny = nx / norm * width / 2, ny / norm * width / 2
        self.poly(d, [(x0 + nx, y0 + ny), (x1 + nx, y1 + ny), (x1 - nx, y1 - ny), (x0 - nx, y0 - ny)], fill)
        return x1, y1

    # -- parts ---------------------------------------------------------------------------------

    def legs(self, d: ImageDraw.ImageDraw) -> None:
        a = self.a
        lower = self.colours["lower_color"]
        lt = a["lower_type"]
        gap = 0.0 if self.view == "side" else 0.042
        for i, sign in enumerate((-1, 1)):
            angle = self.leg_angle * (1 if i == 0 else -1)
            start = (sign * gap, 0.5)
            # bare leg first, then the garment over the part it covers
            end = self.limb(d, start, angle, 0.44, 0.062, self.skin)
            if lt in ("trousers", "jeans"):
                self.limb(d, start, angle, 0.45, 0.072, lower)
                if lt == "jeans":  # light stitched seams and turned-up cuffs
                    x, y = self.p(start[0] + math.sin(angle) * 0.1, 0.6)
                    d.line([x, y, x, y + 0.25 * self.h], fill=mix(lower, (230, 200, 120), 0.6), width=2)
                    ex0, ey0 = end
                    self.poly(d, [(ex0 - 0.037, ey0 - 0.03), (ex0 + 0.037, ey0 - 0.03), (ex0 + 0.037, ey0 - 0.01),
                                  (ex0 - 0.037, ey0 - 0.01)], mix(lower, (255, 255, 255), 0.35))
            elif lt == "shorts":
                self.limb(d, start, angle, 0.17, 0.078, lower)
            shoe_col = self.colours["shoes_color"]
            ex, ey = end
            st = a["shoes_type"]
            fwd = self.facing * 0.045 if self.view == "side" else 0.0
            if st == "boots":
                self.poly(d, [(ex - 0.034, ey - 0.07), (ex + 0.034, ey - 0.07), (ex + 0.036 + fwd, ey + 0.035),
                              (ex - 0.036, ey + 0.035)], shoe_col)
            elif st == "sandals":
                self.ellipse(d, ex - 0.03, ey + 0.005, ex + 0.03 + fwd, ey + 0.032, self.skin)
                for k in range(3):
                    yy = ey + 0.006 + k * 0.009
                    x0, y0 = self.p(ex - 0.034, yy)
                    x1, _ = self.p(ex + 0.034 + fwd, yy)
                    d.line([x0, y0, x1, y0], fill=shoe_col, width=3)
            else:
                self.ellipse(d, ex - 0.036 - (fwd < 0) * 0.03, ey - 0.006, ex + 0.036 + fwd, ey + 0.034, shoe_col)
                if st == "sneakers":
                    x0, y0 = self.p(ex - 0.034, ey + 0.026)
                    x1, _ = self.p(ex + 0.034 + fwd, ey + 0.026)
                    d.line([x0, y0, x1, y0], fill=(240, 240, 236) if a["shoes_color"] != "white" else (60, 60, 60), width=3)
                elif st == "leather shoes":
                    hx, hy = self.p(ex - 0.01, ey + 0.004)
                    d.ellipse([hx - 3, hy - 2, hx + 3, hy + 2], fill=shade(shoe_col, 1.6))
        if lt == "skirt":
            bottom = 0.68 if a["lower_length"] == "short" else 0.88
            spread = 0.11 if a["lower_length"] == "short" else 0.13
            self.poly(d, [(-self.waist, 0.46), (self.waist, 0.46), (spread, bottom), (-spread, bottom)], lower)
            # a hem line so a skirt's shape reads at low resolution
            self.poly(d, [(-spread, bottom - 0.012), (spread, bottom - 0.012), (spread, bottom), (-spread, bottom)],
                      shade(lower, 0.7))
        else:
            # the seat of the garment, bridging the legs
            self.poly(d, [(-self.hip, 0.46), (self.hip, 0.46), (self.hip * 0.95, 0.56), (-self.hip * 0.95, 0.56)], lower)

    def arm(self, d: ImageDraw.ImageDraw, sign: int, far: bool) -> tuple[float, float]:
        a = self.a
        if self.view == "side":
            start = (0.0, 0.19)
        else:
            start = (sign * (self.shoulder + 0.012), 0.19)
        angle = self.arm_angle * sign * (-1 if far else 1) if self.view == "side" else self.arm_angle * sign
        colour = self.colours["upper_color"]
        if far:
            colour = shade(colour, 0.8)
        end = self.limb(d, start, angle, 0.31, 0.05, self.skin)
        sleeve = 0.3 if a["sleeve_length"] == "long" else 0.11
        self.limb(d, start, angle, sleeve, 0.058, colour)
        ex, ey = end
        self.ellipse(d, ex - 0.022, ey - 0.018, ex + 0.022, ey + 0.026, self.skin)
        return ex, ey

    def torso(self, d: ImageDraw.ImageDraw) -> None:
        a = self.a
        colour = self.colours["upper_color"]
        bottom = 0.7 if a["upper_type"] == "coat" else 0.5
        hem = self.hip + (0.03 if a["upper_type"] == "coat" else 0.0)
        pts = [(-self.shoulder, 0.17), (self.shoulder, 0.17), (self.waist, 0.36), (hem, bottom), (-hem, bottom)]
        pattern = a["pattern"]
        x0, y0 = self.p(-max(self.shoulder, hem), 0.15)
        x1, y1 = self.p(max(self.shoulder, hem), bottom)
        box = (int(x0), int(y0), int(math.ceil(x1)) + 1, int(math.ceil(y1)) + 1)
        if pattern in ("striped", "checked"):
            bw, bh = box[2] - box[0], box[3] - box[1]
            tile = Image.new("RGB", (bw, bh), colour)
            td = ImageDraw.Draw(tile)
            other = shade(colour, 0.45) if sum(colour) > 300 else mix(colour, (235, 235, 235), 0.6)
            step = max(6, int(self.h * 0.04))
            for yy in range(0, bh, step):
                td.rectangle([0, yy, bw, yy + step // 2 - 1], fill=other)
            if pattern == "checked":
                for xx in range(0, bw, step):
                    td.rectangle([xx, 0, xx + step // 2 - 1, bh], fill=other)
            mask = Image.new("L", (bw, bh), 0)
            md = ImageDraw.Draw(mask)
            md.polygon([(px - box[0], py - box[1]) for px, py in (self.p(x, y) for x, y in pts)], fill=255)
            d._image.paste(tile, box[:2], mask)  # type: ignore[attr-defined]
        else:
            self.poly(d, pts, colour)
        # every garment type carries a cue that shows from any side
        ut = a["upper_type"]
        trim = shade(colour, 0.6) if sum(colour) > 150 else mix(colour, (200, 200, 200), 0.5)
        if ut in ("jacket", "coat"):
            if self.view == "front":
                x, y = self.p(0, 0.18)
                d.line([x, y, x, self.p(0, bottom)[1]], fill=trim, width=3)
            # a turned-down collar around the neck
            self.poly(d, [(-0.05, 0.16), (0.05, 0.16), (0.065, 0.2), (-0.065, 0.2)], trim)
        if ut == "jacket":  # a waistband at the hip
            self.poly(d, [(-hem, bottom - 0.025), (hem, bottom - 0.025), (hem, bottom), (-hem, bottom)], trim)
        if ut == "shirt":
            collar = (235, 235, 235) if sum(colour) < 500 else (150, 150, 150)
            if self.view == "front":
                self.poly(d, [(-0.035, 0.16), (0.0, 0.205), (0.035, 0.16)], collar)
                for yy in (0.25, 0.31, 0.37, 0.43):
                    self.ellipse(d, -0.006, yy, 0.006, yy + 0.012, collar)
            else:  # the collar band shows at the back of the neck
                self.poly(d, [(-0.04, 0.155), (0.04, 0.155), (0.04, 0.175), (-0.04, 0.175)], collar)
        if ut == "sweater":  # ribbed hem and neckband
            self.poly(d, [(-hem, bottom - 0.03), (hem, bottom - 0.03), (hem, bottom), (-hem, bottom)], trim)
            for xx in np.linspace(-hem, hem, 7):
                x0, y0 = self.p(xx, bottom - 0.03)
                d.line([x0, y0, x0, self.p(xx, bottom)[1]], fill=shade(trim, 0.8), width=2)
            self.poly(d, [(-0.045, 0.16), (0.045, 0.16), (0.045, 0.18), (-0.045, 0.18)], trim)
        if ut == "hoodie":
            if self.view == "front":  # the hood lies around the neck, drawstrings and pocket in front
                self.poly(d, [(-0.075, 0.14), (0.075, 0.14), (0.06, 0.2), (-0.06, 0.2)], shade(colour, 0.8))
                for xx in (-0.02, 0.02):
                    x0, y0 = self.p(xx, 0.19)
                    d.line([x0, y0, x0, self.p(xx, 0.27)[1]], fill=(235, 235, 235), width=2)
                self.poly(d, [(-0.06, 0.38), (0.06, 0.38), (0.07, 0.46), (-0.07, 0.46)], shade(colour, 0.8))
            else:
                self.ellipse(d, -0.065, 0.12, 0.065, 0.23, shade(colour, 0.85))
        if pattern == "logo" and self.view == "front":
            logo = (240, 240, 240) if sum(colour) < 400 else (30, 30, 30)
            self.ellipse(d, -0.03, 0.24, 0.03, 0.3, logo)
        if a["belt"] != NONE and a["upper_type"] != "coat":
            self.poly(d, [(-self.waist - 0.012, 0.465), (self.waist + 0.012, 0.465), (self.waist + 0.012, 0.495),
                          (-self.waist - 0.012, 0.495)], (40, 30, 24))
            if self.view == "front":
                self.ellipse(d, -0.012, 0.468, 0.012, 0.492, (210, 190, 90))

    def head(self, d: ImageDraw.ImageDraw) -> None:
        a = self.a
        long_hair = a["hair_length"] == "long"
        hair = self.hair
        # neck
        self.poly(d, [(-0.022, 0.12), (0.022, 0.12), (0.024, 0.175), (-0.024, 0.175)], shade(self.skin, 0.92))
        hx = 0.012 * self.facing if self.view == "side" else 0.0
        self.ellipse(d, hx - 0.055, 0.005, hx + 0.055, 0.14, self.skin)
        if self.view == "back":
            self.ellipse(d, -0.058, 0.0, 0.058, 0.13, hair)
            if long_hair:
                self.poly(d, [(-0.065, 0.06), (0.065, 0.06), (0.07, 0.29), (-0.07, 0.29)], hair)
        else:
            self.poly(d, [(hx - 0.058, 0.06), (hx - 0.05, 0.01), (hx, -0.004), (hx + 0.05, 0.01), (hx + 0.058, 0.06),
                          (hx + 0.04, 0.035), (hx - 0.04, 0.035)], hair)
            if self.view == "side":
                # hair covers the back of the head
                back = -self.facing
                self.ellipse(d, hx + back * 0.058, 0.0, hx - back * 0.01, 0.1 + 0.02 * long_hair, hair)
            eyes = [-0.022, 0.022] if self.view == "front" else [hx + self.facing * 0.03]
            for ex in eyes:
                self.ellipse(d, ex - 0.007, 0.068, ex + 0.007, 0.08, (40, 30, 30))
            if self.view == "front":
                x0, y0 = self.p(-0.014, 0.108)
                x1, _ = self.p(0.014, 0.108)
                d.line([x0, y0, x1, y0], fill=(196, 52, 76) if self.female else (128, 76, 64), width=3 if self.female else 2)
            if a["eyewear"] != NONE:
                dark = a["eyewear"] == "sunglasses"
                for ex in eyes:
                    self.ellipse(d, ex - 0.016, 0.062, ex + 0.016, 0.088, (20, 20, 24) if dark else None,
                                 outline=(20, 20, 24), width=3)
                if self.view == "front":
                    x0, y0 = self.p(-0.006, 0.072)
                    x1, _ = self.p(0.006, 0.072)
                    d.line([x0, y0, x1, y0], fill=(20, 20, 24), width=3)
                else:
                    x0, y0 = self.p(hx + self.facing * 0.03, 0.072)
                    x1, _ = self.p(hx - self.facing * 0.03, 0.072)
                    d.line([x0, y0, x1, y0], fill=(20, 20, 24), width=3)

    def hair_behind(self, d: ImageDraw.ImageDraw) -> None:
        """Long hair hanging behind the shoulders (drawn before the body)."""
        if self.a["hair_length"] == "long" and self.view != "back":
            hx = -0.02 * self.facing if self.view == "side" else 0.0
            self.poly(d, [(hx - 0.068, 0.05), (hx + 0.068, 0.05), (hx + 0.074, 0.27), (hx - 0.074, 0.27)], self.hair)

    def hat(self, d: ImageDraw.ImageDraw) -> None:
        kind = self.a["hat"]
        if kind == NONE:
            return
        col = self.colours["hat_color"]
        if kind == "beanie":
            self.ellipse(d, -0.062, -0.02, 0.062, 0.09, col)
            self.poly(d, [(-0.062, 0.035), (0.062, 0.035), (0.062, 0.06), (-0.062, 0.06)], shade(col, 0.8))
        elif kind == "cap":
            self.ellipse(d, -0.058, -0.012, 0.058, 0.07, col)
            if self.view == "side":
                f = self.facing
                self.poly(d, [(0.0, 0.035), (f * 0.1, 0.04), (f * 0.1, 0.052), (0.0, 0.052)], shade(col, 0.8))
            elif self.view == "front":
                self.poly(d, [(-0.06, 0.035), (0.06, 0.035), (0.07, 0.052), (-0.07, 0.052)], shade(col, 0.8))
        else:  # brimmed hat
            self.ellipse(d, -0.105, 0.02, 0.105, 0.06, shade(col, 0.85))
            self.poly(d, [(-0.05, -0.03), (0.05, -0.03), (0.058, 0.04), (-0.058, 0.04)], col)

    def scarf(self, d: ImageDraw.ImageDraw) -> None:
        if self.a["scarf"] == NONE:
            return
        col = self.scarf_colour
        self.poly(d, [(-0.05, 0.14), (0.05, 0.14), (0.055, 0.185), (-0.055, 0.185)], col)
        if self.view == "front":
            self.poly(d, [(0.01, 0.18), (0.04, 0.18), (0.045, 0.3), (0.015, 0.3)], col)

    def backpack(self, d: ImageDraw.ImageDraw, behind: bool) -> None:
        if self.a["backpack"] == NONE:
            return
        col = self.colours["backpack_color"]
        if self.view == "back" and not behind:
            self.poly(d, [(-0.082, 0.19), (0.082, 0.19), (0.088, 0.43), (-0.088, 0.43)], col)
            self.poly(d, [(-0.06, 0.33), (0.06, 0.33), (0.062, 0.41), (-0.062, 0.41)], shade(col, 0.75))
        elif self.view == "front" and not behind:
            for sign in (-1, 1):
                x = sign * (self.shoulder - 0.03)
                self.poly(d, [(x - 0.014, 0.17), (x + 0.014, 0.17), (x + 0.014 - sign * 0.01, 0.36),
                              (x - 0.014 - sign * 0.01, 0.36)], col)
        elif self.view == "side" and behind:
            b = -self.facing
            self.poly(d, [(b * 0.04, 0.19), (b * 0.14, 0.2), (b * 0.145, 0.42), (b * 0.04, 0.42)], col)
        elif self.view == "side" and not behind:
            self.poly(d, [(-0.012, 0.17), (0.012, 0.17), (0.012, 0.34), (-0.012, 0.34)], col)

    def bag(self, d: ImageDraw.ImageDraw, hand: tuple[float, float]) -> None:
        kind = self.a["bag"]
        if kind == NONE:
            return
        col = self.colours["bag_color"]
        if kind == "handbag":
            hx, hy = hand
            self.poly(d, [(hx - 0.04, hy + 0.02), (hx + 0.04, hy + 0.02), (hx + 0.05, hy + 0.1), (hx - 0.05, hy + 0.1)], col)
            x0, y0 = self.p(hx - 0.025, hy + 0.02)
            x1, y1 = self.p(hx + 0.025, hy - 0.01)
            d.arc([x0, y1, x1, y0 + 8], 180, 360, fill=shade(col, 0.6), width=3)
        else:
            sx = -self.shoulder * 0.8
            x0, y0 = self.p(sx, 0.17)
            x1, y1 = self.p(-sx + 0.02, 0.46)
            d.line([x0, y0, x1, y1], fill=shade(col, 0.7), width=4)
            bx = -sx + 0.03 if self.view != "side" else -self.facing * 0.05
            self.poly(d, [(bx - 0.05, 0.44), (bx + 0.05, 0.44), (bx + 0.05, 0.54), (bx - 0.05, 0.54)], col)

    def hand_object(self, d: ImageDraw.ImageDraw, hand: tuple[float, float]) -> None:
        kind = self.a["hand_object"]
        if kind == NONE:
            return
        col = self.colours["hand_object_color"]
        hx, hy = hand
        if kind == "phone":
            self.poly(d, [(hx - 0.017, hy - 0.03), (hx + 0.017, hy - 0.03), (hx + 0.017, hy + 0.03), (hx - 0.017, hy + 0.03)], col)
        elif kind == "cup":
            self.poly(d, [(hx - 0.022, hy - 0.035), (hx + 0.022, hy - 0.035), (hx + 0.018, hy + 0.025), (hx - 0.018, hy + 0.025)], col)
            self.poly(d, [(hx - 0.024, hy - 0.042), (hx + 0.024, hy - 0.042), (hx + 0.024, hy - 0.032), (hx - 0.024, hy - 0.032)], (240, 240, 240))
        elif kind == "book":
            self.poly(d, [(hx - 0.035, hy - 0.05), (hx + 0.035, hy - 0.05), (hx + 0.035, hy + 0.04), (hx - 0.035, hy + 0.04)], col)
            self.poly(d, [(hx - 0.035, hy - 0.05), (hx - 0.025, hy - 0.05), (hx - 0.025, hy + 0.04), (hx - 0.035, hy + 0.04)], shade(col, 0.6))
        elif kind == "shopping bag":
            self.poly(d, [(hx - 0.05, hy + 0.02), (hx + 0.05, hy + 0.02), (hx + 0.05, hy + 0.15), (hx - 0.05, hy + 0.15)], col)
            x0, y0 = self.p(hx - 0.02, hy + 0.02)
            x1, _ = self.p(hx + 0.02, hy)
            d.line([x0, y0, (x0 + x1) / 2, self.p(0, hy - 0.01)[1], x1, y0], fill=shade(col, 0.6), width=3)
        elif kind == "umbrella":
            # a closed umbrella hanging from the hand to the ground
            self.poly(d, [(hx - 0.006, hy), (hx + 0.006, hy), (hx + 0.035, hy + 0.3), (hx - 0.035, hy + 0.3)], col)
            x0, y0 = self.p(hx, hy)
            d.arc([x0 - 6, y0 - 10, x0 + 6, y0 + 2], 180, 360, fill=(40, 30, 30), width=3)

    def draw(self, d: ImageDraw.ImageDraw) -> None:
        self.scarf_colour = jitter(BASE_RGB[("red", "grey", "beige", "navy", "green")[int(self.rng.integers(5))]], self.rng)
        self.backpack(d, behind=True)
        self.hair_behind(d)
        side = self.view == "side"
        # the far arm and anything it holds sit behind the body in a side view
        far_hand = None
        if side:
            far_hand = self.arm(d, -1, far=True)
            if self.facing == 1:
                self.hand_object(d, far_hand)
        self.legs(d)
        self.torso(d)
        self.backpack(d, behind=False)
        if self.view == "front" and self.a["bag"] == "shoulder bag":
            self.bag(d, (0.0, 0.0))
        if side:
            near_hand = self.arm(d, 1, far=False)
            right_hand, left_hand = (far_hand, near_hand) if self.facing == 1 else (near_hand, far_hand)
        else:
            left_hand = self.arm(d, -1, far=False)
            right_hand = self.arm(d, 1, far=False)
        if self.view != "front" and self.a["bag"] == "shoulder bag":
            self.bag(d, (0.0, 0.0))
        if self.a["bag"] == "handbag":
            self.bag(d, left_hand)  # type: ignore[arg-type]
        if not (side and self.facing == 1):
            self.hand_object(d, right_hand)  # type: ignore[arg-type]
        self.head(d)
        self.scarf(d)
        self.hat(d)


def draw_occluder(d: ImageDraw.ImageDraw, kind: int, top_px: float, rng: np.random.Generator) -> None:
    colour = jitter(((120, 90, 60), (70, 80, 90), (150, 40, 40))[kind], rng, 0.8)
    top_px = min(top_px, H - 24)  # a cropped person can put the occluder's top below the frame
    if kind == 0:  # a box or crate
        x0 = rng.uniform(-0.1, 0.2) * W
        d.rectangle([x0, top_px, x0 + W * rng.uniform(0.7, 1.0), H], fill=colour, outline=shade(colour, 0.6), width=4)
    elif kind == 1:  # a bench or railing
        d.rectangle([0, top_px, W, top_px + 18], fill=colour)
        for x in range(10, W, 50):
            d.rectangle([x, top_px, x + 12, H], fill=colour)
        d.rectangle([0, top_px + 50, W, max(top_px + 64, H)], fill=colour)
    else:  # a car bonnet
        d.rounded_rectangle([-40, top_px, W + 40, H + 40], radius=60, fill=colour)
        d.rectangle([0, top_px + 50, W, top_px + 60], fill=shade(colour, 1.3))


def render(attrs: dict, shot: Shot) -> Image.Image:
    """Render one 128x256 RGB photo of a person with ``attrs`` taken as ``shot``."""
    rng = rng_for(shot.image_seed, "render")
    img = Image.new("RGB", (W, H))
    draw_background(img, shot.camera, rng)
    d = ImageDraw.Draw(img)
    height = shot.height * H
    top = H - height * (1 - shot.foot_crop) - H * 0.02
    cx = W / 2 + shot.dx * W
    if shot.bystander:
        # someone further away, half out of frame, drawn first
        scale = 0.72
        bshot = Shot(**{**shot.__dict__, "viewpoint": ("front", "back", "side")[int(rng.integers(3))],
                        "action": "walking", "phase": float(rng.random())})
        bx = W / 2 + shot.bystander_side * W * rng.uniform(0.42, 0.55)
        Figure(bx, top - height * 0.1, height * scale, shot.bystander_outfit, bshot, rng,
               SKIN_RGB[int(rng.integers(len(SKIN_RGB)))]).draw(d)
    Figure(cx, top, height, attrs, shot, rng, SKIN_RGB[shot.skin]).draw(d)
    if shot.occluder != "none":
        draw_occluder(d, shot.occluder_kind, top + shot.occluder_top * height, rng)
    img = img.resize((WIDTH, HEIGHT), Image.Resampling.BOX)
    if shot.blur > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(shot.blur))
    arr = np.asarray(img, dtype=np.float32)
    arr = arr * np.asarray(shot.light, dtype=np.float32)
    arr += rng.normal(0.0, shot.noise, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
