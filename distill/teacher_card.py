"""Teacher cards: what a teacher checkpoint is, how well it detects, and whether it passed its gate.

A card is a JSON file next to the weights (``faster_rcnn_R34.pth`` ->
``faster_rcnn_R34.card.json``), written by ``tools/train_teachers.py`` after training and by
``tools/card_teacher.py`` for external weights. It names the config, seed and iterations the
weights come from, their box AP / AP50 on the gate's dataset, the gate's verdict, the commit and
date, and the weights' sha256, so a card can only vouch for the exact file it was written for.
A student run reads the card of ``DISTILL.TEACHER.WEIGHTS`` before building the teacher and logs
it; a missing card, a card of another file or a failed gate stops the run unless
``DISTILL.TEACHER.REQUIRE_CARD`` is False.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile

from distill.errors import ConfigValueError

logger = logging.getLogger(__name__)

CARD_SUFFIX = ".card.json"
_HASH_CHUNK = 1 << 20


class TeacherCardError(ConfigValueError):
    """A teacher without a usable card: none, unreadable, another file's, or a failed gate."""


@dataclasses.dataclass(frozen=True)
class TeacherCard:
    """What is known about one teacher checkpoint.

    Attributes:
        weights_sha256: sha256 of the weights file the card describes.
        config_file: the teacher's config file (as given).
        config: the full config (YAML) the teacher was evaluated with.
        seed: the training run's seed (None for external weights).
        iterations: training iterations (None for external weights).
        dataset: the dataset AP and AP50 were measured on.
        ap: box AP in percent (NaN when the model predicted nothing).
        ap50: box AP at IoU 0.5 in percent.
        min_ap: the gate's AP floor (``TEACHER_GATE.MIN_AP``).
        passed: whether the gate passed.
        verdict: one line saying what the gate saw.
        source: who wrote the card (the tool).
        commit: the codebase's git commit ("unknown" outside a checkout).
        date: when the card was written (UTC, ISO 8601).
        threads: torch's intra-op threads during training or evaluation.
    """

    weights_sha256: str
    config_file: str
    config: str
    seed: int | None
    iterations: int | None
    dataset: str
    ap: float
    ap50: float
    min_ap: float
    passed: bool
    verdict: str
    source: str
    commit: str
    date: str
    threads: int

    def summary(self) -> str:
        """One line for the log: AP, gate, seed, iterations, commit, date."""
        trained = (
            f"seed {self.seed}, {self.iterations} iterations"
            if self.iterations is not None
            else "external weights"
        )
        gate = "passed" if self.passed else "FAILED"
        return (
            f"{self.ap:.1f} AP / {self.ap50:.1f} AP50 on {self.dataset} (gate {gate}: "
            f"{self.verdict}); {trained}; config {self.config_file}; commit {self.commit[:12]}, "
            f"{self.date}"
        )


def card_path(weights: str) -> str:
    """The card file of a weights file: its path with ``.card.json`` for the extension."""
    return os.path.splitext(weights)[0] + CARD_SUFFIX


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_card(card: TeacherCard, weights: str) -> str:
    """Write ``card`` next to ``weights`` (atomically) and return the card's path."""
    path = card_path(weights)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(dataclasses.asdict(card), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_card(weights: str) -> TeacherCard:
    """The card next to ``weights``.

    Raises:
        TeacherCardError: no card, or a file that is not a card (naming the file and the fault).
    """
    path = card_path(weights)
    if not os.path.isfile(path):
        raise TeacherCardError(f"no teacher card at {path}")
    try:
        with open(path) as f:
            fields = json.load(f)
        return TeacherCard(**fields)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
        raise TeacherCardError(f"{path} is not a teacher card: {e}") from None


def check_teacher_card(weights: str, require: bool) -> TeacherCard | None:
    """The card vouching for the teacher weights ``weights``, logged.

    With ``require``, a missing or unreadable card, a card written for another file (sha256)
    and a card whose gate failed raise :class:`TeacherCardError` naming the file. Without it,
    the same faults are logged as warnings and the run goes on with the unverified teacher.
    """
    try:
        card = read_card(weights)
        if card.weights_sha256 != file_sha256(weights):
            raise TeacherCardError(
                f"the teacher card {card_path(weights)} describes another file than {weights} "
                "(sha256 differs): the weights were replaced after the card was written"
            )
        if not card.passed:
            raise TeacherCardError(
                f"the teacher {weights} failed its quality gate: {card.verdict} "
                f"(card {card_path(weights)})"
            )
    except TeacherCardError as e:
        if require:
            raise TeacherCardError(
                f"DISTILL.TEACHER.WEIGHTS: {e}. Train teachers with `make teachers`, card "
                "external weights with tools/card_teacher.py, or set "
                "DISTILL.TEACHER.REQUIRE_CARD False to experiment with an unverified teacher."
            ) from None
        logger.warning(
            f"UNVERIFIED TEACHER (DISTILL.TEACHER.REQUIRE_CARD False): {e}. Results distilled "
            "from it say nothing about the method."
        )
        return None
    logger.info(f"teacher card {card_path(weights)}: {card.summary()}")
    return card
