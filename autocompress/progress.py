"""Progress bars for a running study: one for the study, one for the trial in flight."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autocompress.record import is_feasible

_STAGES = ("prune", "train", "quantize", "measure")


class RichReporter:
    """Receives the objective's events and drives two rich progress bars."""

    def __init__(
        self,
        n_trials: int | None,
        console: Console | None = None,
        metric: str = "accuracy",
        completed: int = 0,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.metric = metric
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.study_task = self.progress.add_task("study", total=n_trials, completed=completed)
        self.trial_task = self.progress.add_task("trial", total=len(_STAGES), visible=False)
        self._epochs = 0
        self._others: dict[str, int] = {}

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def trial_started(self, number: int, config: Any) -> None:
        finetune = config.get("finetune")
        self._epochs = getattr(finetune, "epochs", 0) if finetune is not None else 0
        self.progress.reset(
            self.trial_task,
            total=len(_STAGES) - 1 + self._epochs,
            description=f"trial {number}: {config.describe()}",
            visible=True,
        )

    def stage(self, name: str) -> None:
        if name != "train":
            self.progress.advance(self.trial_task)
        trial = self.progress.tasks[self.trial_task]
        text = str(trial.description).split("  [", 1)[0]
        self.progress.update(self.trial_task, description=f"{text}  [{name}]")

    def epoch(self, epoch: int, total: int, loss: float) -> None:
        self.progress.advance(self.trial_task)

    def trial_finished(self, trial: Any) -> None:
        self.progress.update(self.trial_task, visible=False)
        # The budget counts completed trials: stopped and failed ones are told apart, not
        # counted (the bar read 23/20 when three trials had stopped early).
        if trial.state.name == "COMPLETE":
            self.progress.advance(self.study_task)
        else:
            word = "stopped" if trial.state.name == "PRUNED" else "failed"
            self._others[word] = self._others.get(word, 0) + 1
            extra = ", ".join(f"{n} {w}" for w, n in sorted(self._others.items()))
            self.progress.update(self.study_task, description=f"study ({extra})")
        if trial.state.name == "COMPLETE":
            value, lat, size = trial.values
            mark = "" if is_feasible(trial) else "  [yellow](over the budget)[/]"
            self.console.print(
                f"trial {trial.number}: {self.metric} {value:.4f}  latency {lat:.3f} ms  "
                f"size {size:.1f} KB{mark}"
            )
        elif trial.state.name == "PRUNED":
            reason = trial.user_attrs.get("stopped_reason", "stopped early")
            self.console.print(f"trial {trial.number}: [yellow]{reason}[/]")
        else:
            reason = trial.user_attrs.get("fail_reason", trial.state.name.lower())
            self.console.print(f"trial {trial.number}: [red]failed[/] ({reason})")
