"""Prompt & method panel: prompts, method, its parameters, seed, Run / Cancel, progress."""

from __future__ import annotations

import re
import time

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..document import Document
from ..methods import (
    BATCH_COUNT,
    BATCH_SIZE,
    METHODS,
    PROMPT_HINT,
    NeedsInput,
    Param,
    batch_size_offered,
    changed_words,
    generation_of,
    offered,
    random_seed,
    set_value,
    value,
)
from .new_document import size_note

SEED_TIP = (
    "The random start of the picture: the same seed and settings give the same picture on "
    "this machine; another seed gives a variation."
)


class PromptPanel(QWidget):
    run_requested = Signal(str, int)  # method key, stage (-1 = main, 0 = preparation)
    cancel_requested = Signal()
    word_selected = Signal(str)  # the text selected in the prompt ("" when none)
    native_requested = Signal(int)  # a new canvas at the model's native size (px)

    def __init__(self, doc: Document, available: list[str], parent=None):
        super().__init__(parent)
        self.doc = doc
        self.available = set(available)
        self.model_parts: tuple[str, ...] = ()  # what the loaded model ships (ModelInfo.parts)
        self._loading = False
        self._internal = False
        self._busy = False  # a job runs: the window's job controller says so through set_busy
        self._t0 = 0.0
        self._blend_words: QLineEdit | None = None  # the form's Blend words field, if any
        self._source_label: QLabel | None = None  # what Edit prompt edits
        self._source: str | None = None  # the prompt the edit starts from, if known
        self._selected = ""
        self._phases, self._phase, self._last, self._note = 1, 0, None, ""
        self._native: int | None = None  # the loaded model's native size (px)
        lay = QVBoxLayout(self)
        self.prompt = QPlainTextEdit()
        self.prompt.setPlaceholderText(PROMPT_HINT)
        self.prompt.setFixedHeight(64)
        self.prompt.setToolTip(
            "(word:1.3) gives a word more weight and (word:0.8) less, as in other Stable "
            "Diffusion tools. In Invert & re-edit and Edit prompt, (word:0) takes the word "
            "out while the rest of the picture stays."
        )
        self.negative = QLineEdit()
        self.negative.setPlaceholderText("Negative prompt")
        self.method = QComboBox()
        for m in METHODS.values():
            self.method.addItem(m.label, m.key)
        lay.addWidget(QLabel("Prompt"))
        lay.addWidget(self.prompt)
        lay.addWidget(self.negative)
        lay.addWidget(QLabel("Method"))
        lay.addWidget(self.method)
        self.form_host = QWidget()
        self.form = QFormLayout(self.form_host)
        self.form.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.form_host)
        # the size the model works at, and how results reach the canvas
        size_row = QVBoxLayout()
        self.size_info = QLabel()
        self.size_info.setObjectName("size_info")
        # its text changes with the canvas and model: it must not resize the dock (and the
        # canvas with it) when it does
        self.size_info.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.size_info.setToolTip(
            "Every method works at about the model's native size (each side a multiple of 8) "
            "and resizes its result to the canvas: a canvas much larger than that gives "
            "softer, upscaled results; File › New or the button below start at the native size."
        )
        self.native_button = QPushButton("New at native size")
        self.native_button.setObjectName("native_size")
        self.native_button.setToolTip(
            "Start a new blank canvas at the model's native size (the sharpest results)"
        )
        self.native_button.clicked.connect(lambda: self.native_requested.emit(self._native or 0))
        size_row.addWidget(self.size_info)
        size_row.addWidget(self.native_button)
        lay.addLayout(size_row)
        # the seed and the batch: only for methods the seed changes (hidden for the others)
        self.seed_host = QWidget()
        seed_rows = QVBoxLayout(self.seed_host)
        seed_rows.setContentsMargins(0, 0, 0, 0)
        seed_row = QHBoxLayout()
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip(SEED_TIP)
        self.seed_lock = QCheckBox("Lock")
        self.seed_lock.setToolTip(
            "Locked: every Run uses this seed (to change only the prompt or a setting). "
            "Unlocked: each Run picks a new seed, for a new variation."
        )
        self.dice = QPushButton("Random")
        self.dice.setToolTip("Pick a new random seed now")
        self.seed_label = QLabel("Seed")
        self.seed_label.setToolTip(SEED_TIP)
        seed_row.addWidget(self.seed_label)
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.seed_lock)
        seed_row.addWidget(self.dice)
        seed_rows.addLayout(seed_row)
        batch_row = QHBoxLayout()
        self.batch = QSpinBox()
        self.batch.setObjectName("batch_count")
        self.batch.setRange(int(BATCH_COUNT.lo), int(BATCH_COUNT.hi))
        self.batch.setToolTip(BATCH_COUNT.tooltip)
        batch_label = QLabel(BATCH_COUNT.label)
        batch_label.setToolTip(BATCH_COUNT.tooltip)
        batch_row.addWidget(batch_label)
        batch_row.addWidget(self.batch, 1)
        self.batch_size = QSpinBox()
        self.batch_size.setObjectName("batch_size")
        self.batch_size.setRange(int(BATCH_SIZE.lo), int(BATCH_SIZE.hi))
        self.batch_size.setToolTip(BATCH_SIZE.tooltip)
        self.batch_size_label = QLabel(BATCH_SIZE.label)
        self.batch_size_label.setToolTip(BATCH_SIZE.tooltip)
        batch_row.addWidget(self.batch_size_label)
        batch_row.addWidget(self.batch_size, 1)
        seed_rows.addLayout(batch_row)
        lay.addWidget(self.seed_host)
        buttons = QHBoxLayout()
        self.prep = QPushButton("Make mask")
        self.run = QPushButton("Run")
        self.run.setDefault(True)
        self.run.setToolTip("Run the method (Ctrl+Return)")
        self.cancel = QPushButton("Cancel")
        self.cancel.setToolTip("Stop the running job (Esc)")
        self.cancel.setEnabled(False)
        buttons.addWidget(self.prep)
        buttons.addWidget(self.run, 1)
        buttons.addWidget(self.cancel)
        lay.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.progress.setValue(0)
        self.eta = QLabel("")
        self.eta.setAlignment(Qt.AlignmentFlag.AlignRight)
        lay.addWidget(self.progress)
        lay.addWidget(self.eta)
        lay.addStretch(1)

        self.prompt.textChanged.connect(lambda: self._save(prompt=self.prompt.toPlainText()))
        self.prompt.textChanged.connect(self._update_blend_hint)
        self.prompt.selectionChanged.connect(self._on_selection)
        self.negative.textChanged.connect(lambda t: self._save(negative_prompt=t))
        self.method.currentIndexChanged.connect(self._on_method)
        self.seed.valueChanged.connect(lambda v: self._save(seed=int(v)))
        self.seed_lock.toggled.connect(lambda v: self._save(seed_locked=bool(v)))
        self.batch.valueChanged.connect(lambda v: self._save(batch_count=int(v)))
        self.batch_size.valueChanged.connect(lambda v: self._save(batch_size=int(v)))
        self.dice.clicked.connect(lambda: self.seed.setValue(random_seed()))
        self.run.clicked.connect(lambda: self.run_requested.emit(self.current_method(), -1))
        self.prep.clicked.connect(lambda: self.run_requested.emit(self.current_method(), 0))
        self.cancel.clicked.connect(self.cancel_requested)
        doc.settings_changed.connect(self.load_settings)
        # the image's parameters are recorded just after its pixels change (Apply, Open):
        # read them once the change is complete
        self._source_timer = QTimer(self)
        self._source_timer.setSingleShot(True)
        self._source_timer.setInterval(0)
        self._source_timer.timeout.connect(self._refresh_source)
        doc.reset.connect(self._source_timer.start)
        doc.reset.connect(self._update_size_info)
        doc.layer_changed.connect(lambda name, _: name == "image" and self._source_timer.start())
        self.load_settings()

    # ---- settings <-> widgets -----------------------------------------------------------

    def set_native(self, native: int | None) -> None:
        self._native = native
        self._update_size_info()

    def _update_size_info(self) -> None:
        h, w = self.doc.size
        self.size_info.setText(size_note(h, w, self._native))
        self.native_button.setVisible(bool(self._native) and (h, w) != (self._native,) * 2)

    def current_method(self) -> str:
        return self.method.currentData()

    def _save(self, **changes) -> None:
        if not self._loading:
            self._set(lambda: self.doc.update_settings(**changes))

    def _set(self, fn) -> None:
        """Change the document from a widget without rebuilding the widgets."""
        self._internal = True
        try:
            fn()
        finally:
            self._internal = False

    def load_settings(self) -> None:
        if self._internal:
            return
        self._loading = True
        s = self.doc.settings
        if self.prompt.toPlainText() != s["prompt"]:
            self.prompt.setPlainText(s["prompt"])
        self.negative.setText(s["negative_prompt"])
        self.seed.setValue(int(s["seed"]))
        self.seed_lock.setChecked(bool(s["seed_locked"]))
        self.batch.setValue(int(s.get("batch_count", 1)))
        self.batch_size.setValue(int(s.get("batch_size", 1)))
        idx = self.method.findData(s["method"])
        self.method.setCurrentIndex(max(0, idx))
        self._loading = False
        self._build_form()

    def set_model_parts(self, parts: tuple[str, ...]) -> None:
        """Offer the options that need a part of the model (classifier guidance) only when
        the loaded model ships it."""
        if tuple(parts) != self.model_parts:
            self.model_parts = tuple(parts)
            self._build_form()

    def set_available(self, methods: list[str]) -> None:
        self.available = set(methods)
        for i in range(self.method.count()):
            m = METHODS[self.method.itemData(i)]
            missing = [e for e in m.engine if e not in self.available]
            item = self.method.model().item(i)
            item.setEnabled(not missing)
            tip = m.tooltip
            if missing:
                tip = f"Not available in this engine yet (needs {', '.join(missing)}).\n{tip}"
            self.method.setItemData(i, tip, Qt.ItemDataRole.ToolTipRole)
        self._build_form()

    def _on_method(self) -> None:
        if not self._loading:
            self._set(lambda: self.doc.update_settings(method=self.current_method()))
            self._build_form()

    def _build_form(self) -> None:
        while self.form.rowCount():
            self.form.removeRow(0)
        key = self.current_method()
        m = METHODS[key]
        self._blend_words = self._source_label = None
        if m.from_image:
            self._source_label = QLabel()
            self._source_label.setObjectName("source_info")
            # a long source prompt wraps instead of widening the dock past the window
            self._source_label.setWordWrap(True)
            self._source_label.setSizePolicy(
                QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred
            )
            self.form.addRow(QLabel("Source"), self._source_label)
        for p in m.params:
            if not offered(p, self.model_parts):
                continue
            w = self._editor(key, p)
            w.setToolTip(p.tooltip)
            label = QLabel(p.label)
            label.setToolTip(p.tooltip)
            self.form.addRow(label, w)
        missing = [e for e in m.engine if e not in self.available]
        self.prep.setVisible(bool(m.prep_label))
        self.prep.setText(m.prep_label or "")
        self.method.setToolTip(m.tooltip)
        self.prompt.setPlaceholderText(m.prompt_hint(self.model_parts))
        self.seed_host.setVisible(m.seeded)
        for w in (self.batch_size, self.batch_size_label):
            w.setVisible(batch_size_offered(key))
        tip = SEED_TIP + (f"\n{m.seed_tip}" if m.seed_tip else "")
        self.seed.setToolTip(tip)
        self.seed_label.setToolTip(tip)
        self.prep.setToolTip(m.prep_tip)
        self._refresh_source()
        self._update_dependents()
        self.run.setToolTip(
            f"Not available yet: the engine lacks {', '.join(missing)}." if missing else m.tooltip
        )
        self._update_buttons()

    # attention-control fields that do nothing without control / without local blend
    P2P_FIELDS = ("keep_layout", "keep_detail", "local_blend", "blend_words")

    def _field(self, key: str) -> QWidget | None:
        return self.form_host.findChild(QWidget, f"param_{key}")

    def _update_dependents(self) -> None:
        """Grey out the attention-control fields when control is off, Blend words when
        local blend is off (their values are kept)."""
        control, blend = self._field("control"), self._field("local_blend")
        on = control is None or control.currentText() != "none"
        for key in self.P2P_FIELDS:
            w = self._field(key)
            if w is not None:
                w.setEnabled(on and (key != "blend_words" or blend is None or blend.isChecked()))

    def _editor(self, method: str, p: Param) -> QWidget:
        v = value(self.doc, method, p)

        def put(x):
            self._set(lambda: set_value(self.doc, method, p, x))

        if p.choices:
            w = QComboBox()
            w.addItems(list(p.choices))
            w.setCurrentText(str(v))
            w.currentTextChanged.connect(
                lambda t: self._set(lambda: set_value(self.doc, method, p, t))
            )
            w.currentTextChanged.connect(self._update_dependents)
        elif p.kind is bool:
            w = QCheckBox()
            w.setChecked(bool(v))
            w.toggled.connect(lambda x: self._set(lambda: set_value(self.doc, method, p, bool(x))))
            w.toggled.connect(self._update_dependents)
        elif p.kind is str:
            w = QLineEdit(str(v))
            w.textChanged.connect(put)
            if p.key == "classifier_targets":  # what a target looks like
                w.setPlaceholderText("e.g. night, snow ground, 2 houses")
            if p.key == "blend_words":
                self._blend_words = w
            elif p.key == "source_prompt":  # the diff the blend words default to
                w.textChanged.connect(lambda _: self._refresh_source())
        elif p.kind is int:
            w = QSpinBox()
            w.setRange(int(p.lo), int(p.hi))
            w.setValue(int(v))
            w.valueChanged.connect(
                lambda x: self._set(lambda: set_value(self.doc, method, p, int(x)))
            )
        else:
            w = QDoubleSpinBox()
            w.setRange(p.lo, p.hi)
            w.setSingleStep(p.step)
            w.setDecimals(2)
            w.setValue(float(v))
            w.valueChanged.connect(
                lambda x: self._set(lambda: set_value(self.doc, method, p, float(x)))
            )
        w.setObjectName(f"param_{p.key}")
        return w

    # ---- what an attention-controlled edit starts from ------------------------------------

    def _refresh_source(self) -> None:
        """The prompt the edit starts from (Invert & re-edit: its Source prompt field;
        Edit prompt: the image layer's generation), for the Source row and the blend hint."""
        key = self.current_method()
        self._source = None
        if key == "reedit":
            self._source = value(self.doc, key, self._param(key, "source_prompt"))
        elif METHODS[key].from_image:
            try:
                g = generation_of(self.doc)
            except NeedsInput as e:  # its first clause; all of it in the tooltip
                self._show_source(re.split(r" \(|:", str(e))[0], str(e))
            else:
                self._source = g["prompt"]
                prompt = g["prompt"] if len(g["prompt"]) <= 40 else g["prompt"][:39] + "…"
                size = f"{g['width']}x{g['height']}"
                self._show_source(
                    f"“{prompt}” · seed {g['seed']}",
                    f"Generated with “{g['prompt']}”, seed {g['seed']}, {g['steps']} steps, "
                    f"guidance {g['guidance']}, {size}: Edit prompt replays this beside the edit.",
                )
        self._update_blend_hint()

    def _show_source(self, text: str, tip: str) -> None:
        # not word-wrapped: a wrapping label in the form makes the dock re-layout forever
        if self._source_label is not None:
            self._source_label.setText(text)
            self._source_label.setToolTip(tip)

    @staticmethod
    def _param(method: str, key: str) -> Param:
        return next(p for p in METHODS[method].params if p.key == key)

    def _update_blend_hint(self) -> None:
        """An empty Blend words field shows the words the prompt change implies."""
        w = self._blend_words
        if w is None:
            return
        if self._source is None:
            w.setPlaceholderText("the words that differ between the prompts")
            return
        words = changed_words(self._source, self.prompt.toPlainText())
        w.setPlaceholderText(", ".join(words) if words else "none yet: the prompts are the same")

    def blend_hint(self) -> str:
        return "" if self._blend_words is None else self._blend_words.placeholderText()

    def _on_selection(self) -> None:
        text = self.prompt.textCursor().selectedText().strip()
        if text != self._selected:
            self._selected = text
            self.word_selected.emit(text)

    # ---- job state --------------------------------------------------------------------

    def _update_buttons(self) -> None:
        m = METHODS[self.current_method()]
        ok = all(e in self.available for e in m.engine)
        self.run.setEnabled(ok and not self._busy)
        self.prep.setEnabled(ok and not self._busy)
        self.cancel.setEnabled(self._busy)

    def set_busy(self, busy: bool, text: str = "", phases: int = 1, note: str = "") -> None:
        """A job starts (``phases``: how many model-call phases it runs one after the other,
        all under one bar; ``note``: shown with every step, e.g. "picture 2 of 4") or ends."""
        self._busy = busy
        self._update_buttons()
        self._phases, self._phase, self._last, self._note = max(1, phases), 0, None, note
        self._base, self._span = 0.0, 1.0 / self._phases  # the current phase's share
        if busy:
            self._t0 = time.monotonic()
            self.progress.setRange(0, 0)  # busy until the first step
            self.progress.setFormat(text or "starting…")
            self.eta.setText("")
        else:
            self.progress.setRange(0, 100)
            self.progress.setValue(0)
            self.progress.setFormat(text or "idle")
            self.eta.setText("")

    def show_started(self, text: str) -> None:
        if self._last is None:
            self.progress.setFormat(text)

    def show_step(self, i: int, n: int, label: str = "") -> None:
        """One bar over all of a job's phases: a phase ends where the step count starts
        again (or changes its total) and gets an equal share of what is left of the bar;
        the time left counts the phases still expected. The bar never goes back: a phase
        beyond those expected (a second pass) runs at the bar's end."""
        if self._last is not None and (i < self._last[0] or n != self._last[1]):
            self._phase += 1
            self._base += self._span
            self._span = (1.0 - self._base) / max(1, self._phases - self._phase)
        self._last = (i, max(n, 1))
        done = min(1.0, self._base + self._span * min(i, n) / max(n, 1))
        self.progress.setRange(0, 1000)
        self.progress.setValue(round(done * 1000))
        text = f"{label or 'step'} {i}/{n}"
        if max(self._phases, self._phase + 1) > 1:
            text += f" · phase {self._phase + 1}"
        if self._note:
            text += f" · {self._note}"
        self.progress.setFormat(text)
        elapsed = time.monotonic() - self._t0
        if done >= 1:
            self.eta.setText(f"{elapsed:.1f} s elapsed · finishing…")
        elif done > 0:
            left = elapsed / done * (1 - done)
            self.eta.setText(f"{elapsed:.1f} s elapsed · about {left:.1f} s left")
