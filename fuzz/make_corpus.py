#!/usr/bin/env python3
"""Writes the committed seed corpus of the fuzz targets (fuzz/corpus/<target>/): small valid
inputs of every kind each reader accepts, plus a few near misses. Run from anywhere:
    python3 fuzz/make_corpus.py
Needs Pillow for the image seeds (Debian: python3-pil, e.g. /usr/bin/python3). Deterministic: the same files every run."""
import base64, io, json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
TINY_CHECKPOINT_CONFIG = {  # the tiny preset's config, as a checkpoint stores it
    "vision": {"image_size": 32, "patch_size": 8, "channels": 3, "dim": 32, "n_blocks": 1, "n_heads": 2,
               "mlp_ratio": 4, "dropout": 0.0},
    "decoder": {"vocab_size": 40, "n_embd": 32, "n_head": 2, "n_layer": 2, "num_experts": 4, "top_k": 2,
                "expert_ratio": 4, "block_size": 64, "dropout": 0.0},
    "visual_tokens": "cls", "pad_id": 0, "bos_id": 1, "eos_id": 2}


def put(target, name, data):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))


def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header, offset, blob = {}, 0, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blob += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob


def image_bytes(fmt, mode="RGB", size=(3, 2), **save):
    from PIL import Image
    img = Image.new(mode, size)
    for y in range(size[1]):
        for x in range(size[0]):
            v = (40 * x + 90 * y) % 256
            img.putpixel((x, y), {"RGB": (v, 255 - v, 7 * x), "L": v, "LA": (v, 200), "RGBA": (v, 10, 200, 128),
                                  "P": v % 4}[mode])
    out = io.BytesIO()
    img.save(out, fmt, **save)
    return out.getvalue()


def main():
    # JSON: every kind of value, escapes, nesting, numbers at the edges.
    put("json", "values", '{"a":[1,-2.5,3e10,1e-300,true,false,null],"s":"x\\u00e9\\n\\"\\ud83d\\ude00","o":{}}')
    put("json", "config", json.dumps(TINY_CHECKPOINT_CONFIG))
    put("json", "nested", "[[[[[[[[[[{}]]]]]]]]]]")
    put("json", "numbers", "[0,-0,9007199254740993,-9223372036854775808,18446744073709551616,1.7976931348623157e308]")
    put("json", "bad", '{"a":1,}')

    # safetensors: every dtype the reader converts, metadata, an empty file and a zero-size tensor.
    f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.25)
    put("safetensors", "f32", safetensors([("w", "F32", [2, 2], f32)], {"format": "pt", "step": "3"}))
    put("safetensors", "dtypes", safetensors([
        ("f64", "F64", [2], struct.pack("<2d", 1.5, -7.0)),
        ("f16", "F16", [2], struct.pack("<2H", 0x3C00, 0xC000)),
        ("bf16", "BF16", [2], struct.pack("<2H", 0x3F80, 0x4040)),
        ("i64", "I64", [1], struct.pack("<q", -5)),
        ("i32", "I32", [1], struct.pack("<i", 7)),
        ("i16", "I16", [1], struct.pack("<h", -3)),
        ("u8", "U8", [2], b"\x01\xff"),
        ("i8", "I8", [1], b"\x80"),
        ("b", "BOOL", [1], b"\x01")]))
    put("safetensors", "empty", safetensors([]))
    put("safetensors", "zero_size", safetensors([("none", "F32", [3, 0], b""), ("one", "F32", [1], struct.pack("<f", 1))]))
    put("safetensors", "truncated", safetensors([("w", "F32", [2, 2], f32)])[:-3])

    # config: first byte picks the reader (0 config, 1 text config, 2 vocabulary, 3 step and Rng).
    put("config", "vlm", b"\x00" + json.dumps(TINY_CHECKPOINT_CONFIG, separators=(",", ":")).encode())
    put("config", "vlm_patches", b"\x00" + json.dumps(dict(TINY_CHECKPOINT_CONFIG, visual_tokens="patches")).encode())
    put("config", "text", b"\x01" + json.dumps({"decoder": TINY_CHECKPOINT_CONFIG["decoder"]}).encode())
    put("config", "vocab", b"\x02" + json.dumps(["<pad>", "<bos>", "<eos>", " ", "a", "b", "\u00e9", "\u6f22"]).encode())
    put("config", "rng", b"\x03" + json.dumps(["1", "18446744073709551615", "42", "7", True, -0.25]).encode())
    put("config", "step", b"\x0312")

    # captions.csv (the data folder holds a.png; secret.png lies outside it).
    put("csv", "plain", "image,caption,split\na.png,a red circle,train\na.png,a blue square,val\n")
    put("csv", "quoted", 'image,caption\r\n"a.png","a ""quoted"", comma\r\nand a line break"\r\n')
    put("csv", "bom_utf8", "\ufeffcaption,image\nun caf\u00e9 \u00e0 gauche,a.png\n\n")
    put("csv", "outside", "image,caption\n../secret.png,a secret\n")
    put("csv", "absolute", "image,caption\n/etc/passwd,no\n")
    put("csv", "bad_split", "image,caption,split\na.png,x,holdout\n")

    # base64 CSV: a PNG and a JPEG in base64, one with a data: URI prefix, one with line breaks.
    png = base64.b64encode(image_bytes("PNG")).decode()
    jpg = base64.b64encode(image_bytes("JPEG", size=(8, 8))).decode()
    put("base64_csv", "two_rows", "b64string_images,caption\n%s,a small image\ndata:image/jpeg;base64,%s,a jpeg\n" % (png, jpg))
    put("base64_csv", "wrapped", 'caption,b64string_images\nwrapped,"%s"\n' % "\n".join(png[i:i + 16] for i in range(0, len(png), 16)))
    put("base64_csv", "unpadded", "b64string_images,caption\n%s,no padding\n" % png.rstrip("="))

    # images: each format stb_image reads, in the colour modes it converts.
    put("image", "rgb.png", image_bytes("PNG"))
    put("image", "gray.png", image_bytes("PNG", "L"))
    put("image", "gray_alpha.png", image_bytes("PNG", "LA"))
    put("image", "rgba.png", image_bytes("PNG", "RGBA"))
    put("image", "palette.png", image_bytes("PNG", "P"))
    put("image", "rgb.jpg", image_bytes("JPEG", size=(9, 7), quality=90))
    put("image", "progressive.jpg", image_bytes("JPEG", size=(9, 7), progressive=True))
    put("image", "rgb.bmp", image_bytes("BMP"))
    put("image", "palette.gif", image_bytes("GIF", "P"))
    put("image", "rgb.tga", image_bytes("TGA"))
    put("image", "rle.tga", image_bytes("TGA", compression="tga_rle"))
    put("image", "refused.ppm", image_bytes("PPM"))  # a format seemoe refuses by its signature
    # What fuzzing found, kept as seeds so every run starts from them (tests/test_data.cpp too).
    for found in ("jpeg/undefined_huffman_table.jpg", "png/oversized_chunk.png"):
        with open(os.path.join(HERE, "..", "tests", "data", found), "rb") as f:
            put("image", os.path.basename(found), f.read())


if __name__ == "__main__":
    main()
