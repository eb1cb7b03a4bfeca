"""Your own predictor: a class the platform serves like a built-in model.

Put a ``predictor.py`` at the top of a script job's code folder that defines one subclass of
``Predictor`` (several: name the served one with ``PREDICTOR = MyPredictor``). When the job
registers its model, the platform exports the class's ``Input`` and ``Output`` as JSON Schema
inside the sandbox, stores the code with the version, and ``gureum deploy`` serves it: the
replica checks every input and output against those schemas, and your code runs in sandboxed
worker processes, never in the replica::

    from pydantic import BaseModel
    from gureum.serve import Predictor

    class In(BaseModel):
        text: str

    class Out(BaseModel):
        label: str
        score: float

    class Sentiment(Predictor):
        Input, Output = In, Out
        unit = "text"

        def load(self, model_dir):
            self.words = (model_dir / "words.txt").read_text().split()

        def predict(self, input):
            hits = sum(w in input.text for w in self.words)
            return Out(label="pos" if hits else "neg", score=float(hits))

        def units(self, input, output):
            return max(1.0, len(input.text) / 1000)  # billed per started 1000 characters

This module imports pydantic only: it is what runs inside the sandbox next to your code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

__all__ = ["DISCOVERY_FILE", "Predictor"]

DISCOVERY_FILE = "predictor.py"  # at the top of the code folder
DEFAULT_UNIT = "prediction"


class Predictor:
    """Subclass it; the platform makes one instance per worker process and calls ``load`` once.

    ``Input``/``Output``: pydantic models of one input and one output (``Output`` a JSON
    object). ``predict`` gets one validated ``Input`` and returns an ``Output`` (or a dict that
    validates as one); override ``predict_batch`` to take a whole batch at once. ``units``
    counts what one input/output pair is billed, in ``unit``s (default: 1 per input).
    ``timeout_s`` bounds one call of ``predict_batch``; ``memory_mb`` the worker's memory
    (resident set, watched from outside); past either the worker is killed and replaced.
    """

    Input: ClassVar[type[BaseModel]]
    Output: ClassVar[type[BaseModel]]
    unit: ClassVar[str] = DEFAULT_UNIT
    timeout_s: ClassVar[float] = 30.0
    memory_mb: ClassVar[int | None] = None  # None: the platform's default

    def load(self, model_dir: Path) -> None:
        """Read the model's files (what the training script wrote into its model folder)."""

    def predict(self, input: Any) -> Any:
        raise NotImplementedError("override predict(self, input) or predict_batch")

    def predict_batch(self, inputs: list[Any]) -> list[Any]:
        """Outputs for a batch of inputs, in order; by default ``predict`` one at a time."""
        return [self.predict(x) for x in inputs]

    def units(self, input: Any, output: Any) -> float:
        """Units one input and its output are billed (``unit``s); 1 by default."""
        return 1.0
