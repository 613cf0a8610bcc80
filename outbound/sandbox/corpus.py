"""The greeting corpus: real audio for simulated contacts, made on this machine.

Answering-machine detection can only be tested on audio. Asterisk's own prompts give one
"hello" and one long announcement; this corpus adds the cases that matter for tuning AMD:
several short human hellos (different voices and speeds), several long machine greetings
ending in a beep, the tricky short voicemail ("Hi, leave a message" + beep, under 2 s),
digital silence and low line noise. Each file has a known truth label and a known length.

It is synthesised with espeak-ng and sox (Debian packages, installed by scripts/setup)
rather than stored in the repository: no binary blobs, no licence questions, and the
recipe below is the whole truth about every file. The result is cached under
``<cache>/corpus/<hash of the recipe and the tool versions>/`` so it is made once per
machine (about a second), and a changed recipe makes a new set rather than mixing old and
new files. Files are 8 kHz mono 16-bit PCM WAV, which Asterisk's format_wav plays as is
(no transcoding, so AMD hears exactly these samples).

``install_corpus`` hard-links (or copies) the files into a sandbox instance's
``sounds/corpus`` folder; the sandbox dialplan plays them from there with the
``greet_<name>`` scenarios of ``[sim-scenario]``.

Pure standard library plus subprocess.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import wave
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from .root import Log, SandboxError, _locked, default_cache_dir

__all__ = [
    "CORPUS",
    "RATE",
    "CorpusFile",
    "Greeting",
    "ensure_corpus",
    "install_corpus",
    "load_manifest",
    "scenario",
]

RATE = 8000  # Hz: narrow-band telephony, what AMD analyses
# Bump when the way files are made changes in a way the recipe does not show.
_VERSION = 2
_MANIFEST = "manifest.json"  # written last: a folder without it is a half-made leftover
_BEEP_HZ = 1000
_BEEP_S = 0.5
_TOOL_TIMEOUT = 30


@dataclass(frozen=True)
class Greeting:
    """How one corpus file is made, and what it is.

    ``kind`` groups files for reports (hello, machine_greeting, short_voicemail, silence,
    noise); ``truth`` is the right answer for AMD: human, machine, silence or noise.
    Spoken files say ``text`` with espeak-ng ``voice`` at ``speed`` words per minute,
    after ``lead`` seconds of silence (people and machines do not speak at the very
    instant of answer); ``beep`` appends a pause and a 1 kHz half-second tone.
    ``seconds`` is the length of a silence or noise file; ``level`` the noise amplitude
    (fraction of full scale).
    """

    name: str
    kind: str
    truth: str
    text: str = ""
    voice: str = "en+m3"
    speed: int = 160
    lead: float = 0.4
    beep: bool = False
    seconds: float = 0.0
    level: float = 0.0


@dataclass(frozen=True)
class CorpusFile:
    """One made file, as listed in the manifest. ``speech_s`` is the spoken part,
    ``duration_s`` the whole file (lead, speech, beep): the greeting ends when the file
    does, which is when the simulated contact emits SimGreetingEnd."""

    name: str
    kind: str
    truth: str
    text: str
    voice: str
    speed: int
    file: str
    speech_s: float
    duration_s: float

    @property
    def scenario(self) -> str:
        return scenario(self.name)


CORPUS: tuple[Greeting, ...] = (
    # Short human answers: a word or two, then the line goes quiet (the simulated
    # contact sends silence after the file).
    Greeting("hello_m3", "hello", "human", "Hello?", "en+m3", 160),
    Greeting("yes_hello_f2", "hello", "human", "Yes, hello?", "en+f2", 175),
    Greeting("miller_m1", "hello", "human", "Miller speaking.", "en-us+m1", 180),
    Greeting("hello_f4", "hello", "human", "Hello?", "en-us+f4", 130, lead=0.8),
    # Answering machines: 5-10 s of announcement, then the beep.
    Greeting(
        "vm_family_m3",
        "machine_greeting",
        "machine",
        "Hello, you have reached the Miller family. We can't come to the phone right now. "
        "Please leave your name and number after the tone.",
        "en+m3",
        165,
        beep=True,
    ),
    Greeting(
        "vm_office_f2",
        "machine_greeting",
        "machine",
        "Thank you for calling Acme Logistics. Our office is closed. Our business hours are "
        "Monday to Friday, nine to five. Please leave a message after the beep.",
        "en+f2",
        175,
        beep=True,
    ),
    Greeting(
        "vm_carrier_m1",
        "machine_greeting",
        "machine",
        "The person you are calling is not available at the moment. "
        "Please record your message after the tone.",
        "en-us+m1",
        150,
        beep=True,
    ),
    # The hard cases: voicemails as short as a person's hello.
    Greeting(
        "short_vm_f3",
        "short_voicemail",
        "machine",
        "Hi, leave a message.",
        "en+f3",
        195,
        lead=0.2,
        beep=True,
    ),
    # Shorter still: AMD's defaults hear no more than a person's two words and say HUMAN.
    Greeting(
        "short_vm_f1",
        "short_voicemail",
        "machine",
        "Leave a message.",
        "en+f1",
        210,
        lead=0.2,
        beep=True,
    ),
    Greeting("silence", "silence", "silence", seconds=3.0),
    # Line hiss well below AMD's silence threshold (256 of 32767 mean magnitude).
    Greeting("noise_low", "noise", "noise", seconds=6.0, level=0.01),
)


def scenario(name: str) -> str:
    """The sim-scenario extension that plays corpus file ``name``."""
    return f"greet_{name}"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SandboxError(
            f"{name} is not installed; run `apt-get install -y espeak-ng sox` (the sandbox "
            "makes its greeting corpus with them)"
        )
    return path


def _run(cmd: Sequence[str]) -> None:
    try:
        out = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=_TOOL_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"corpus: cannot run {cmd[0]}: {exc}") from exc
    if out.returncode != 0:
        raise SandboxError(
            f"corpus: {' '.join(cmd)} failed (rc={out.returncode}): {out.stderr.strip()}"
        )


def _tool_versions() -> str:
    """espeak-ng's and sox's versions: other versions make other audio, so they are
    part of the cache key."""
    found = []
    for tool in ("espeak-ng", "sox"):
        try:
            out = subprocess.run(
                [_tool(tool), "--version"], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxError(f"corpus: cannot run {tool} --version: {exc}") from exc
        lines = (out.stdout or out.stderr).strip().splitlines()
        found.append(lines[0] if lines else f"{tool} (no version)")
    return " | ".join(found)


def recipe_hash(recipe: Sequence[Greeting] = CORPUS, tools: str | None = None) -> str:
    """Short hash of the recipe, the code version and the tool versions."""
    data = {
        "version": _VERSION,
        "rate": RATE,
        "tools": tools if tools is not None else _tool_versions(),
        "recipe": [asdict(g) for g in recipe],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


_PCM = ["-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer"]


def _make(g: Greeting, out_dir: Path, work: Path) -> CorpusFile:
    """Make one file. Speech: espeak-ng at 22.05 kHz, trimmed of espeak's own leading
    and trailing silence (so the known lengths are the spoken ones), resampled to 8 kHz,
    normalised to -6 dBFS peak, with ``lead`` seconds of silence in front."""
    # No dither, fixed seeds: the same recipe gives byte-identical files.
    sox = [_tool("sox"), "-D", "-R"]
    out = out_dir / f"{g.name}.wav"
    if not g.text:
        if g.level:
            effect = ["synth", str(g.seconds), "whitenoise", "vol", str(g.level)]
        else:
            effect = ["trim", "0", str(g.seconds)]
        _run([*sox, "-n", *_PCM, str(out), *effect])
        return _entry(g, out, 0.0)
    raw = work / f"{g.name}.raw.wav"
    speech = work / f"{g.name}.speech.wav"
    _run([_tool("espeak-ng"), "-v", g.voice, "-s", str(g.speed), "-w", str(raw), g.text])
    trim = ["silence", "1", "0.02", "0.5%"]
    _run(
        [*sox, str(raw), *_PCM, str(speech), *trim, "reverse", *trim, "reverse", "gain", "-n", "-6"]
    )
    speech_s = _seconds(speech)
    parts = [str(speech)]
    if g.beep:
        beep = work / f"{g.name}.beep.wav"
        tone = ["synth", str(_BEEP_S), "sine", str(_BEEP_HZ), "vol", "0.5", "pad", "0.3", "0"]
        _run([*sox, "-n", *_PCM, str(beep), *tone])
        parts.append(str(beep))
    _run([*sox, *parts, *_PCM, str(out), "pad", str(g.lead), "0"])
    return _entry(g, out, speech_s)


def _entry(g: Greeting, path: Path, speech_s: float) -> CorpusFile:
    return CorpusFile(
        name=g.name,
        kind=g.kind,
        truth=g.truth,
        text=g.text,
        voice=g.voice if g.text else "",
        speed=g.speed if g.text else 0,
        file=path.name,
        speech_s=round(speech_s, 3),
        duration_s=round(_seconds(path), 3),
    )


def load_manifest(folder: Path) -> list[CorpusFile]:
    """The files of a made (or installed) corpus folder, in recipe order."""
    try:
        data = json.loads((folder / _MANIFEST).read_text())
        return [CorpusFile(**f) for f in data["files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SandboxError(f"no usable corpus manifest in {folder}: {exc}") from exc


def ensure_corpus(
    cache_dir: Path | None = None, log: Log = print, recipe: Sequence[Greeting] = CORPUS
) -> Path:
    """Return the folder holding the made corpus, making it the first time.

    Made in a temporary folder renamed into place with its manifest, under a file lock,
    so concurrent callers wait for one build and nobody sees a half-made set. Raises
    SandboxError (with the failing command) if espeak-ng or sox is missing or fails.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base = cache / "corpus"
    key = recipe_hash(recipe)
    folder = base / key
    if (folder / _MANIFEST).exists():
        return folder
    with _locked(base / ".lock"):
        if (folder / _MANIFEST).exists():
            return folder
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=base))
        try:
            with tempfile.TemporaryDirectory(dir=base) as work:
                with ThreadPoolExecutor(max_workers=4) as pool:
                    files = list(pool.map(lambda g: _make(g, tmp, Path(work)), recipe))
            manifest = {"hash": key, "rate": RATE, "files": [asdict(f) for f in files]}
            (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            tmp.chmod(0o755)
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in base.iterdir():  # earlier recipes: nothing refers to them any more
            if old.is_dir() and old.name != key and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
        took = time.monotonic() - started
        log(f"sandbox: made the greeting corpus ({len(files)} files) in {took:.1f}s: {folder}")
        return folder


def install_corpus(dest: Path, cache_dir: Path | None = None, log: Log = print) -> list[CorpusFile]:
    """Put the corpus (made if needed) into ``dest``: hard links when on the same file
    system as the cache (instant, no extra space), copies otherwise."""
    src = ensure_corpus(cache_dir, log)
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        target = dest / path.name
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
    return load_manifest(dest)
