"""Media sized by what it is: images by tile, audio and video per second, PDF per page, from
inline bytes and from the Files API's metadata (Gemini's documented rates)."""

from __future__ import annotations

import base64
import io
import struct
import wave
import zlib

import pytest

from quotaflow.gemini import FileMeta, classify, estimate_tokens, media_tokens
from quotaflow.gemini._media import image_size, pdf_pages, wav_seconds

GEN = classify("POST", "/v1beta/models/gemini-2.5-flash:generateContent")


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = (
        struct.pack(">I", len(ihdr))
        + b"IHDR"
        + ihdr
        + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    )
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def jpeg(width: int, height: int) -> bytes:
    app0 = (
        b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    )
    exif = b"\xff\xe1" + struct.pack(">H", 2 + 3000) + b"\x00" * 3000  # a long segment first
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + exif + sof + b"\xff\xd9"


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00" * 16


def webp(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def wav(seconds: float, rate: int = 16_000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))
    return out.getvalue()


def pdf(pages: int) -> bytes:
    objs = b"".join(
        b"%d 0 obj << /Type /Page /Parent 2 0 R >> endobj\n" % (i + 3) for i in range(pages)
    )
    return (
        b"%PDF-1.4\n2 0 obj << /Type /Pages /Kids [] /Count "
        + str(pages).encode()
        + b" >> endobj\n"
        + objs
        + b"%%EOF"
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def inline(mime: str, data: bytes) -> dict[str, object]:
    return {"contents": [{"parts": [{"inlineData": {"mimeType": mime, "data": b64(data)}}]}]}


@pytest.mark.parametrize("make", [png, jpeg, gif, webp])
def test_image_headers_give_their_dimensions(make: object) -> None:
    assert callable(make)
    assert image_size(make(1000, 800)) == (1000, 800)
    assert image_size(make(17, 5)) == (17, 5)


@pytest.mark.parametrize(
    ("width", "height", "tokens"),
    [
        (384, 384, 258),  # small: one image's worth
        (385, 100, 258),  # one tile
        (1000, 800, 4 * 258),  # 2 x 2 tiles of 768 px
        (3000, 2000, 4 * 3 * 258),
    ],
)
@pytest.mark.parametrize("make", [png, jpeg, webp])
def test_images_are_sized_by_tile(make: object, width: int, height: int, tokens: int) -> None:
    assert callable(make)
    assert estimate_tokens(GEN, inline("image/png", make(width, height))) == tokens


def test_wav_duration_from_its_header() -> None:
    data = wav(2.5)
    assert wav_seconds(data[:4096], len(data)) == pytest.approx(2.5)
    assert estimate_tokens(GEN, inline("audio/wav", data)) == 80  # 2.5 s x 32 tokens/s


def test_audio_without_a_header_uses_the_stated_bitrate_guess() -> None:
    mp3 = b"\xff\xfb" + b"\x00" * 159_998  # an MP3 frame header: no duration in it
    assert estimate_tokens(GEN, inline("audio/mpeg", mp3)) == 320  # 160 kB at 16 kB/s: 10 s


def mp4(seconds: int, scale: int = 600) -> bytes:
    mvhd = b"\x00" * 4 + b"\x00" * 8 + struct.pack(">II", scale, seconds * scale) + b"\x00" * 80
    moov = struct.pack(">I", 8 + 8 + len(mvhd)) + b"moov" + struct.pack(">I", 8 + len(mvhd))
    ftyp = struct.pack(">I", 16) + b"ftypisom" + b"\x00" * 4
    mdat = struct.pack(">I", 8 + 5000) + b"mdat" + b"\x00" * 5000
    return ftyp + mdat + moov + b"mvhd" + mvhd  # moov after the media data, as often


def test_mp4_duration_from_its_movie_header() -> None:
    assert estimate_tokens(GEN, inline("video/mp4", mp4(12))) == 12 * 263


def test_pdf_pages_are_counted_from_the_bytes() -> None:
    assert pdf_pages(pdf(7)) == 7
    assert estimate_tokens(GEN, inline("application/pdf", pdf(7))) == 7 * 258


def test_a_ten_minute_video_file_seen_by_the_files_api() -> None:
    meta = FileMeta.from_json(
        {
            "name": "files/vid",
            "mimeType": "video/mp4",
            "sizeBytes": "73400320",
            "videoMetadata": {"videoDuration": "600s"},
        }
    )
    body = {
        "contents": [
            {
                "parts": [
                    {
                        "fileData": {
                            "mimeType": "video/mp4",
                            "fileUri": "https://x/v1beta/files/vid",
                        }
                    },
                    {"text": "Summarize"},
                ]
            }
        ]
    }
    assert estimate_tokens(GEN, body, {"files/vid": meta}) == 600 * 263 + 3
    # a file never seen: one image's worth (the estimate cannot know; settlement corrects it)
    assert estimate_tokens(GEN, body) == 258 + 3


def test_media_resolution_sets_the_per_image_figure() -> None:
    body = inline("image/png", png(3000, 2000))
    body["generationConfig"] = {"mediaResolution": "MEDIA_RESOLUTION_LOW"}
    assert estimate_tokens(GEN, body) == 280
    low_video = media_tokens("video/mp4", duration=10.0, resolution="MEDIA_RESOLUTION_LOW")
    assert low_video == 1000
    assert media_tokens("audio/ogg", duration=60.0) == 1920


def test_unreadable_data_falls_back_to_one_image() -> None:
    body = {"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "!!"}}]}]}
    assert estimate_tokens(GEN, body) == 258


def test_interactions_input_is_sized_too() -> None:
    call = classify("POST", "/v1beta/interactions", {"model": "gemini-3-flash-preview"})
    body = {
        "model": "gemini-3-flash-preview",
        "input": [
            {"type": "text", "text": "Describe this image."},
            {"type": "image", "mime_type": "image/png", "data": b64(png(1000, 800))},
        ],
        "system_instruction": "Be brief.",
    }
    assert estimate_tokens(call, body) == 5 + 4 * 258 + 3
