"""The Free Spoken Digit Dataset (FSDD) as log-mel spectrograms, computed in batch with torch.

`DATA_DIR/fsdd/recordings/{digit}_{speaker}_{index}.wav`: 3,000 mono 16-bit PCM WAV files at 8 kHz (10
digits x 6 speakers x 50 recordings), and `DATA_DIR/fsdd/MD5SUMS` with the md5 of every file; every file is
checked on every load (21 MB: well under a second). Read with the standard library's `wave`; offline
only (when the folder is missing, one line says where to get it).

Features (`log_mel`), all recordings at once:
- each recording cropped or zero-padded at its end to SAMPLES = 8,000 samples (1.0 s; the recordings are
  trimmed of silence and start with the word; 94% are shorter, the longest 2.3 s lose their tail);
- |STFT|^2 with 25 ms Hann windows (200 samples, FFT of 256) every 20 ms (160 samples), no centering:
  49 frames (the framing of "Hello Edge" (Zhang et al. 2017), 40 x 49; a 10 ms hop doubles the frames
  and the cost of a CNN for little: spoken digits last ~0.4 s);
- 40 triangular mel bands (HTK mel scale, 0 Hz to 4 kHz, unit peak), then log(energy + 1e-6);
- normalized per mel band with the mean and std of the training recordings (the validation part, held
  out of them later, included; the test recordings never).
Inputs are [1, 40, 49]: one channel, mel bands by frames.

Splits: the dataset's own convention, recordings 0-4 of every (digit, speaker) are test and 5-49 train;
or `speakers_out=NAME`: every recording of the other five speakers trains (and validates), every
recording of NAME tests (a speaker shift).
"""
from __future__ import annotations

import math
import re
import wave
from pathlib import Path

import numpy as np
import torch

from lottery.errors import UserError
from lottery.data.download import md5_of, open_regular
from lottery.data.raw import RawSplits

SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
RATE = 8000
SAMPLES = 8000  # 1.0 s per recording
WINDOW, HOP, FFT = 200, 160, 256  # 25 ms windows every 20 ms
MELS = 40
VAL_SIZE = 300
_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
WHERE = ("the Free Spoken Digit Dataset (github.com/Jakobovski/free-spoken-digit-dataset): put its recordings/ "
         "folder and an MD5SUMS list in DATA_DIR/fsdd/ (see ../shared/data/README.md)")


# --- mel scale and filterbank ----------------------------------------------------------------------
def hz_to_mel(hz: torch.Tensor | float, scale: str = "htk") -> torch.Tensor:
    """HTK: 2595 log10(1 + f / 700). Slaney (Auditory Toolbox): linear below 1 kHz (f / (200/3)),
    logarithmic above (15 + ln(f / 1000) / (ln 6.4 / 27))."""
    hz = torch.as_tensor(hz, dtype=torch.float64)
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    if scale == "slaney":
        linear = hz / (200.0 / 3)
        return torch.where(hz >= 1000.0, 15.0 + torch.log(hz.clamp(min=1e-9) / 1000.0) / (math.log(6.4) / 27.0), linear)
    raise ValueError(f"unknown mel scale {scale!r}; known: htk, slaney")


def mel_to_hz(mel: torch.Tensor | float, scale: str = "htk") -> torch.Tensor:
    mel = torch.as_tensor(mel, dtype=torch.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    if scale == "slaney":
        return torch.where(mel >= 15.0, 1000.0 * torch.exp((mel - 15.0) * (math.log(6.4) / 27.0)), mel * (200.0 / 3))
    raise ValueError(f"unknown mel scale {scale!r}; known: htk, slaney")


def mel_filterbank(bands: int = MELS, fft: int = FFT, rate: int = RATE, low: float = 0.0, high: float | None = None,
                   scale: str = "htk") -> torch.Tensor:
    """[bands, fft // 2 + 1] triangular filters, unit peak, centers equally spaced on the mel scale."""
    high = rate / 2 if high is None else high
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(low, scale)), float(hz_to_mel(high, scale)), bands + 2), scale)
    bins = torch.linspace(0, rate / 2, fft // 2 + 1, dtype=torch.float64)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - left) / (center - left)
    falling = (right - bins) / (right - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def log_mel(audio: torch.Tensor, bands: int = MELS) -> torch.Tensor:
    """[N, SAMPLES] float audio -> [N, bands, frames] log mel energies (see the module doc)."""
    window = torch.hann_window(WINDOW, periodic=True, dtype=audio.dtype, device=audio.device)
    spectrum = torch.stft(audio, FFT, HOP, WINDOW, window, center=False, return_complex=True)  # [N, 129, frames]
    power = spectrum.real ** 2 + spectrum.imag ** 2
    filters = mel_filterbank(bands).to(audio.device)
    return torch.log(torch.einsum("mf,nft->nmt", filters, power) + 1e-6)


# --- files ------------------------------------------------------------------------------------------
def read_wav(path: Path) -> np.ndarray:
    """A mono 16-bit PCM WAV file at 8 kHz as float32 in [-1, 1)."""
    try:
        with wave.open(str(path), "rb") as handle:
            if handle.getnchannels() != 1 or handle.getsampwidth() != 2 or handle.getframerate() != RATE:
                raise UserError(f"{path} is not mono 16-bit PCM at {RATE} Hz ({handle.getnchannels()} channels, "
                                f"{8 * handle.getsampwidth()} bits, {handle.getframerate()} Hz)")
            frames = handle.readframes(handle.getnframes())
    except (wave.Error, EOFError) as exc:
        raise UserError(f"{path} is not a readable WAV file ({exc})") from None
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0


def recordings(folder: Path) -> list[tuple[Path, int, str, int]]:
    """(path, digit, speaker, index) of every recording, checked against MD5SUMS, in name order."""
    sums_path = folder / "MD5SUMS"
    if not (folder / "recordings").is_dir() or not sums_path.exists():
        raise UserError(f"{folder} has no FSDD (recordings/ and MD5SUMS); get {WHERE}")
    expected = {}
    try:
        with open_regular(sums_path) as handle:
            text = handle.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{sums_path} is not a text list of MD5 sums ({exc.reason} at byte {exc.start}); get {WHERE}") from None
    for line in text.splitlines():
        md5, _, name = line.strip().partition("  ")
        if md5 and name:
            expected[Path(name).name] = md5
    found = []
    for name in sorted(expected):
        path = folder / "recordings" / name
        match = _NAME.match(name)
        if not match:
            continue
        if not path.exists():
            raise UserError(f"{path} is missing (listed in {sums_path}); get {WHERE}")
        actual = md5_of(path)
        if actual != expected[name]:
            raise UserError(f"{path} has MD5 {actual}, expected {expected[name]} ({sums_path}): a damaged or "
                            f"different file; restore it")
        found.append((path, int(match.group(1)), match.group(2), int(match.group(3))))
    if len(found) != 3000:
        raise UserError(f"{sums_path} lists {len(found)} recordings, FSDD has 3,000; get {WHERE}")
    return found


def load_fsdd(data_dir: Path, speakers_out: str = "") -> RawSplits:
    if speakers_out and speakers_out not in SPEAKERS:
        raise UserError(f"data.speakers_out must be one of {', '.join(SPEAKERS)}, got {speakers_out!r}")
    files = recordings(Path(data_dir) / "fsdd")
    audio = np.zeros((len(files), SAMPLES), dtype=np.float32)
    for row, (path, *_) in enumerate(files):
        samples = read_wav(path)[:SAMPLES]
        audio[row, :len(samples)] = samples
    features = log_mel(torch.from_numpy(audio)).unsqueeze(1)  # [N, 1, MELS, frames]
    labels = torch.tensor([digit for _, digit, _, _ in files])
    if speakers_out:
        test = torch.tensor([speaker == speakers_out for _, _, speaker, _ in files])
    else:
        test = torch.tensor([index < 5 for _, _, _, index in files])
    train = ~test
    mean = features[train].mean(dim=(0, 3), keepdim=True)  # per mel band, over recordings and frames
    std = features[train].std(dim=(0, 3), keepdim=True)
    features = (features - mean) / std
    return RawSplits(features[train], labels[train], features[test], labels[test], 10, VAL_SIZE)


def speakers_of(data_dir: Path, split: str = "test", speakers_out: str = "") -> list[str]:
    """The speaker of every recording of a split, in the order load_fsdd gives them."""
    files = recordings(Path(data_dir) / "fsdd")
    in_test = [(s == speakers_out) if speakers_out else (i < 5) for _, _, s, i in files]
    return [s for (_, _, s, _), t in zip(files, in_test) if t == (split == "test")]
