"""The pygame clip-pair viewer behind ``prefrl label``: a person says which clip is better.

Two clips play side by side, in sync and looping. Keys (also shown in the help bar):

====================  ==========================
Left  / 1             the left clip is better
Right / 2             the right clip is better
Up    / =             equally good (tie)
Down  / x             can't tell
Space                 replay both clips from the start
Backspace / u         undo the last answer (the pair comes back)
q / Esc               quit
mouse click           on a clip: that clip is better; on a help item: that action
====================  ==========================

Every answer is committed to the label store on the keypress, before the next pair is
drawn, so a viewer killed at any moment loses at most the pair on screen. Pairs are
leased: two viewers on one store never show the same pair. The next pairs are leased,
loaded, rendered and scaled ahead by :class:`~prefrl.human.prefetch.PairPrefetcher`, so
the next pair is on screen within a frame of the keypress.

This module is only the window: events in, pixels out. What is on screen, the answers
and undo are a :class:`~prefrl.human.session.LabelSession`.

The only module of prefrl that imports pygame, and only when a viewer opens (only the
CLI imports this module). Tests drive :class:`LabelViewer` with posted pygame events and
:meth:`LabelViewer.step`. (Above 500 lines: all of it draws or handles the events of the
one window; what needs no pygame is in :mod:`~prefrl.human.session` and
:mod:`~prefrl.human.layout`.)
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, TextIO

from prefrl.feedback.choices import Choice
from prefrl.feedback.store import LabelStore
from prefrl.human.clips import RenderInfo
from prefrl.human.layout import HELP_ITEMS, Action, Layout, Theme, clip_box, inside, mix
from prefrl.human.prefetch import PairPrefetcher, PreparedPair
from prefrl.human.session import LabelSession, Notice
from prefrl.util.errors import PrefrlError


def import_pygame() -> ModuleType:
    """pygame, imported on first use, with a one-line error when it is missing."""
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    # X11 WM_CLASS "prefrl" (pygame would use the script's name), so window tools find us.
    os.environ.setdefault("SDL_VIDEO_X11_WMCLASS", "prefrl")
    try:
        import pygame
    except ImportError:
        raise PrefrlError("the label viewer needs pygame; install it with: pip install 'pygame>=2.5'") from None
    return pygame


def key_actions(pg: ModuleType) -> dict[int, Action]:
    """The key bindings (pygame key codes to actions)."""
    return {
        pg.K_LEFT: Action.LEFT, pg.K_1: Action.LEFT, pg.K_KP1: Action.LEFT,
        pg.K_RIGHT: Action.RIGHT, pg.K_2: Action.RIGHT, pg.K_KP2: Action.RIGHT,
        pg.K_UP: Action.TIE, pg.K_EQUALS: Action.TIE, pg.K_KP_EQUALS: Action.TIE,
        pg.K_DOWN: Action.CANT_TELL, pg.K_x: Action.CANT_TELL,
        pg.K_SPACE: Action.REPLAY,
        pg.K_BACKSPACE: Action.UNDO, pg.K_u: Action.UNDO,
        pg.K_q: Action.QUIT, pg.K_ESCAPE: Action.QUIT,
    }


class _Text:
    """Fonts and a cache of rendered text (rendering text every frame is slow)."""

    SIZES = {"title": 22, "body": 17, "small": 14, "key": 14, "big": 28}

    def __init__(self, pg: ModuleType) -> None:
        self.pg = pg
        path = None
        for name in ("dejavusans", "notosans", "liberationsans", "arial"):
            path = pg.font.match_font(name)
            if path:
                break
        bold_path = pg.font.match_font("dejavusans", bold=True) if path else None
        self.fonts = {name: pg.font.Font(path, size) for name, size in self.SIZES.items()}
        self.bold = {name: pg.font.Font(bold_path or path, size) for name, size in self.SIZES.items()}
        if not bold_path:
            for font in self.bold.values():
                font.set_bold(True)
        self.unicode = self._has_glyphs(self.fonts["body"], "←→↑↓⌫…✓·")
        self._cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    @staticmethod
    def _has_glyphs(font: Any, text: str) -> bool:
        missing = font.metrics("\ue000")[0]  # a private-use code point: the "missing" box
        return all(m is not None and m != missing for m in font.metrics(text))

    def sym(self, fancy: str, plain: str) -> str:
        """``fancy`` if the font can draw it, else the ASCII ``plain``."""
        return fancy if self.unicode else plain

    def render(self, text: str, size: str = "body", color: tuple[int, int, int] = (255, 255, 255), bold: bool = False) -> Any:
        key = (text, size, color, bold)
        surface = self._cache.get(key)
        if surface is None:
            font = (self.bold if bold else self.fonts)[size]
            surface = font.render(text, True, color)
            self._cache[key] = surface
            if len(self._cache) > 600:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return surface


@dataclass
class _Toast:
    text: str
    color: tuple[int, int, int]
    until: float


class LabelViewer:
    """A pygame window that shows pending clip pairs and stores the person's answers.

    Use as a context manager (``open`` / ``close``), then call :meth:`run`, or drive it
    frame by frame: post pygame events and call :meth:`step`.

    The session parameters (``labeller``, ``ahead``, ``lease_seconds``, ``poll_seconds``,
    ``loop_pause``, ``event_log``) are those of :class:`~prefrl.human.session.LabelSession`.

    :param clips_dir: the clips folder (holds ``labels.sqlite``)
    :param task: the store's task name
    :param info: how to render the clips (domain, env id, playback speed)
    :param atari_scale: Atari frames are shown this many times larger (default 3)
    :param mujoco_scale: MuJoCo renders are shown this many times larger
    :param fps_cap: frames drawn per second at most
    :param theme: colours
    """

    FLASH_SECONDS = 0.45

    def __init__(
        self,
        clips_dir: str | os.PathLike[str],
        task: str,
        info: RenderInfo | None = None,
        *,
        labeller: str = "human",
        ahead: int = 2,
        lease_seconds: float = 60.0,
        poll_seconds: float = 0.5,
        atari_scale: int = 3,
        mujoco_scale: float = 1.5,
        fps_cap: int = 60,
        loop_pause: float = 0.5,
        event_log: TextIO | None = None,
        theme: Theme | None = None,
    ) -> None:
        self.session = LabelSession(
            clips_dir, task, info or RenderInfo(task=task), labeller=labeller, ahead=ahead,
            lease_seconds=lease_seconds, poll_seconds=poll_seconds, loop_pause=loop_pause,
            event_log=event_log, notify=self._notify,
        )
        self.atari_scale = atari_scale
        self.mujoco_scale = mujoco_scale
        self.fps_cap = fps_cap
        self.theme = theme or Theme()
        self._pg: ModuleType | None = None
        self._screen: Any = None
        self._text: _Text | None = None
        self._keys: dict[int, Action] = {}
        self._layout: Layout | None = None
        self._flash: tuple[Choice, float] | None = None
        self._toast: _Toast | None = None
        self._mouse = (-1, -1)
        self._help_items: list[tuple[tuple[int, int, int, int], Action]] = []
        self._header_free = (0, 0)
        self._drawn: tuple[Any, ...] | None = None  # signature of the frame on screen

    # ---------------------------------------------------------------- lifecycle

    def open(self) -> LabelViewer:
        """Open the store and the window, start preparing pairs."""
        pg = import_pygame()
        self._pg = pg
        self.session.open_store()
        no_display = "cannot open a window (no display found); run the viewer on a desktop (DISPLAY set), " \
                     "or over ssh -X, or under xvfb-run"
        if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("SDL_VIDEODRIVER")
        ):
            self.close()
            raise PrefrlError(no_display)  # before SDL probes Wayland and prints its own noise
        # Only the display and fonts: no audio (no ALSA noise, no sound card needed).
        try:
            pg.display.init()
        except pg.error as exc:
            self.close()
            raise PrefrlError(
                f"cannot open a window ({exc}); run the viewer on a desktop (DISPLAY set), "
                "or over ssh -X, or under xvfb-run"
            ) from None
        headless = pg.display.get_driver() in ("dummy", "offscreen")
        if headless and os.environ.get("SDL_VIDEODRIVER", "") not in ("dummy", "offscreen"):
            # SDL fell back to drawing into memory: a window nobody could see.
            self.close()
            raise PrefrlError(no_display)
        pg.font.init()
        # The dummy/offscreen drivers (tests, screenshots) report a made-up 1024x768 desktop.
        screen = None
        if not headless:
            sizes = pg.display.get_desktop_sizes()
            screen = sizes[0] if sizes and min(sizes[0]) > 0 else None
        box = clip_box(self.session.info, self.atari_scale, self.mujoco_scale, screen)
        self._layout = Layout.for_box(box)
        pg.display.set_caption(f"prefrl label - {self.session.task}")  # ASCII: some X tools misread UTF-8 titles
        self._screen = pg.display.set_mode((self._layout.width, self._layout.height))
        self._text = _Text(pg)
        self._keys = key_actions(pg)
        self.session.start(box)
        return self

    def close(self) -> None:
        """Give back the leases of pairs not answered, close store and window (idempotent)."""
        self.session.close()
        if self._pg is not None:
            self._pg.display.quit()
            self._pg = None

    def __enter__(self) -> LabelViewer:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def layout(self) -> Layout:
        assert self._layout is not None, "open() the viewer first"
        return self._layout

    @property
    def current(self) -> PreparedPair | None:
        """The pair on screen, or None (waiting)."""
        return self.session.current

    @property
    def shown_at(self) -> float:
        """Clock reading when the pair on screen appeared (or was replayed)."""
        return self.session.shown_at

    @property
    def prefetcher(self) -> PairPrefetcher:
        return self.session.prefetcher

    @property
    def store(self) -> LabelStore:
        return self.session.store

    @property
    def screen(self) -> Any:
        """The window surface (e.g. for ``pygame.image.save``)."""
        return self._screen

    # ---------------------------------------------------------------- loop

    def run(self, max_seconds: float | None = None) -> int:
        """Show pairs until the person quits (or ``max_seconds`` pass).

        :return: labels stored in this session
        """
        pg = self._pg
        assert pg is not None, "open() the viewer first"
        clock = pg.time.Clock()
        started = time.monotonic()
        while self.step():
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                break
            # Idle screens need few frames; playing clips get the full rate.
            clock.tick(self.fps_cap if self.session.current is not None else min(self.fps_cap, 20))
        return self.session.session_labels

    def step(self, frame_time: float | None = None) -> bool:
        """Handle the queued events, bring on the next pair if due, draw one frame.

        :param frame_time: clock reading (``time.monotonic()`` seconds) to draw for;
            default now
        :return: False once the person asked to quit
        """
        pg = self._pg
        assert pg is not None, "open() the viewer first"
        for event in pg.event.get():
            self.handle_event(event)
            if self.session.quitting:
                break
        now = time.monotonic() if frame_time is None else frame_time
        if not self.session.quitting:
            self.session.update(now)
            # Redraw only when the picture changes (clips run at 15-30 fps, the loop at
            # 60): a full-window flip costs real CPU, which the trainer next door needs.
            signature = self._frame_signature(now)
            if signature != self._drawn:
                self.draw(now)
                pg.display.flip()
                self._drawn = signature
            self.session.confirm_shown()
        return not self.session.quitting

    def _frame_signature(self, now: float) -> tuple[Any, ...]:
        """Everything the next frame depends on; equal signatures draw equal frames."""
        session = self.session
        shown = session.current
        flash = None
        if self._flash is not None and 0 <= now - self._flash[1] < self.FLASH_SECONDS:
            flash = int((now - self._flash[1]) * 30)  # the fade, in 30 steps a second
        toast = self._toast.text if self._toast is not None and time.monotonic() <= self._toast.until else None
        return (
            shown.pair_id if shown is not None else None,
            session.frame_index(now) if shown is not None else int(now * 20),  # clip frame, or spinner
            flash, toast, tuple(session.counts.values()), session.session_labels, session.awaiting,
            self._action_at(self._mouse), session.prefetcher.preparing,
        )

    def handle_event(self, event: Any) -> None:
        """React to one pygame event (keys, clicks, window close)."""
        pg = self._pg
        assert pg is not None, "open() the viewer first"
        if event.type == pg.QUIT:
            self.perform(Action.QUIT)
        elif event.type == pg.KEYDOWN:
            action = self._keys.get(event.key)
            if action is not None:
                self.perform(action)
        elif event.type == pg.MOUSEMOTION:
            self._mouse = event.pos
        elif event.type == pg.MOUSEBUTTONDOWN and event.button == 1:
            self._mouse = event.pos
            action = self._action_at(event.pos)
            if action is not None:
                self.perform(action)

    def perform(self, action: Action) -> None:
        """Do what a key or click asked."""
        now = time.monotonic()
        choice = action.choice
        if choice is not None:
            if self.session.answer(choice, now):
                self._flash = (choice, now)
        elif action is Action.REPLAY:
            self.session.replay(now)
        elif action is Action.UNDO:
            if self.session.undo(now):
                self._flash = None
        elif action is Action.QUIT:
            self.session.quit()

    # ---------------------------------------------------------------- helpers

    def _notify(self, notice: Notice) -> None:
        self._toast = _Toast(notice.text, self.theme.color(notice.tone), time.monotonic() + notice.seconds)

    def _action_at(self, pos: tuple[int, int]) -> Action | None:
        if self.session.current is not None:
            for rect, action in ((self.layout.left_box, Action.LEFT), (self.layout.right_box, Action.RIGHT)):
                if inside(pos, rect):
                    return action
        for rect, action in self._help_items:
            if inside(pos, rect):
                return action
        return None

    # ---------------------------------------------------------------- drawing

    def draw(self, now: float) -> None:
        """Draw the whole window for time ``now`` (does not flip)."""
        screen, theme = self._screen, self.theme
        screen.fill(theme.background)
        self._draw_header()
        if self.session.current is not None:
            self._draw_pair(self.session.current, now)
        else:
            self._draw_waiting(now)
        self._draw_help()
        self._draw_toast(now)

    def _blit(self, surface: Any, x: int, y: int, anchor: str = "topleft") -> Any:
        rect = surface.get_rect(**{anchor: (x, y)})
        self._screen.blit(surface, rect)
        return rect

    def _draw_header(self) -> None:
        pg, text, theme, lay = self._pg, self._text, self.theme, self.layout
        assert pg is not None and text is not None
        pg.draw.rect(self._screen, theme.panel, (0, 0, lay.width, lay.header_height))
        dot = text.sym(" · ", " | ")
        title = self._blit(text.render("prefrl", "title", theme.text, bold=True), Layout.MARGIN, 13)
        task = self._blit(text.render(f"{dot.strip()}  {self.session.task}", "body", theme.dim), title.right + 10, 17)
        c = self.session.counts
        stats = f"labelled {c['answered']} / {c['pairs']}{dot}pending {c['pending']}{dot}you {self.session.session_labels}"
        stats_rect = self._blit(text.render(stats, "body", theme.text), lay.width - Layout.MARGIN, 8, "topright")
        if self.session.current is not None:
            label = text.render(f"pair {self.session.current.pair_id}", "small", theme.dim)
            self._blit(label, lay.width - Layout.MARGIN, 31, "topright")
        self._header_free = (task.right + 16, stats_rect.left - 16)
        if self._toast is None or not self._toast_fits():
            prompt = text.render("Which clip is better?", "body", theme.text, bold=True)
            middle = (self._header_free[0] + self._header_free[1]) // 2
            self._blit(prompt, middle, lay.header_height // 2 - 2, "center")
        # Progress of the whole clips folder along the bottom edge of the header.
        total = max(c["pairs"], 1)
        pg.draw.rect(self._screen, theme.faint, (0, lay.header_height - 4, lay.width, 4))
        pg.draw.rect(self._screen, theme.ok, (0, lay.header_height - 4, round(lay.width * c["answered"] / total), 4))

    def _draw_pair(self, shown: PreparedPair, now: float) -> None:
        pg, text, theme, lay = self._pg, self._text, self.theme, self.layout
        assert pg is not None and text is not None
        index = self.session.frame_index(now)
        flash_choice, flash_strength = None, 0.0
        if self._flash is not None:
            age = now - self._flash[1]
            if 0 <= age < self.FLASH_SECONDS:
                flash_choice, flash_strength = self._flash[0], 1.0 - age / self.FLASH_SECONDS
            elif age >= self.FLASH_SECONDS:
                self._flash = None
        sides = (
            (lay.left_box, shown.left, theme.left, f"LEFT  ({text.sym('1 / ←', '1 / Left')})", Choice.LEFT),
            (lay.right_box, shown.right, theme.right, f"RIGHT  ({text.sym('2 / →', '2 / Right')})", Choice.RIGHT),
        )
        hover = self._action_at(self._mouse)
        for rect, frames, accent, caption, side_choice in sides:
            x, y, w, h = rect
            self._blit(text.render(caption, "body", accent, bold=True), x + w // 2, lay.caption_y + 4, "midtop")
            pg.draw.rect(self._screen, theme.frame_bg, rect)
            frame = frames[min(index, len(frames) - 1)]
            fh, fw = frame.shape[:2]
            surface = pg.image.frombuffer(frame, (fw, fh), "RGB")  # zero-copy view of the prepared frame
            self._screen.blit(surface, (x + (w - fw) // 2, y + (h - fh) // 2))
            # Border: the side's colour, brighter under the mouse; flashes after an answer.
            hovered = hover is not None and hover.value == side_choice.value
            border = accent if hovered else mix(accent, theme.background, 0.55)
            pg.draw.rect(self._screen, border, (x - 3, y - 3, w + 6, h + 6), 3, border_radius=4)
            if flash_choice is not None and (
                flash_choice is side_choice or flash_choice in (Choice.TIE, Choice.CANT_TELL)
            ):
                glow = mix(theme.color(flash_choice.value), theme.background, flash_strength)
                pg.draw.rect(self._screen, glow, (x - 8, y - 8, w + 16, h + 16), 4, border_radius=8)
            # Playhead.
            pg.draw.rect(self._screen, theme.faint, (x, lay.bar_y, w, 6), border_radius=3)
            done = (index + 1) / len(frames)
            pg.draw.rect(self._screen, mix(accent, theme.background, 0.8), (x, lay.bar_y, max(6, round(w * done)), 6),
                         border_radius=3)
        if shown.note and self._toast is None:
            self._blit(text.render(shown.note, "small", theme.warn), lay.width // 2, lay.bar_y + 12, "midtop")

    def _draw_waiting(self, now: float) -> None:
        pg, text, theme, lay = self._pg, self._text, self.theme, self.layout
        assert pg is not None and text is not None
        cx = lay.width // 2
        cy = lay.left_box[1] + lay.box[1] // 2 - 40
        # A turning arc: the viewer is alive and polling the store.
        angle = (now * 3.0) % (2 * math.pi)
        pg.draw.circle(self._screen, theme.faint, (cx, cy - 50), 22, 4)
        pg.draw.arc(self._screen, theme.left, (cx - 22, cy - 72, 44, 44), angle, angle + 1.8, 4)
        headline, detail = self.session.waiting_message(text.sym("…", "..."))
        self._blit(text.render(headline, "big", theme.text, bold=True), cx, cy, "midtop")
        self._blit(text.render(detail, "body", theme.dim), cx, cy + 44, "midtop")
        self._blit(text.render(f"{text.sym('q / esc', 'q / Esc')} quits; labels are saved on every keypress",
                               "small", theme.faint), cx, cy + 76, "midtop")

    def _draw_help(self) -> None:
        pg, text, theme, lay = self._pg, self._text, self.theme, self.layout
        assert pg is not None and text is not None
        pg.draw.rect(self._screen, theme.panel, (0, lay.help_y, lay.width, lay.height - lay.help_y))
        rendered = []
        for fancy, plain, what, tone, action in HELP_ITEMS:
            key_surface = text.render(text.sym(fancy, plain), "key", theme.background, bold=True)
            what_surface = text.render(what, "small", theme.text)
            rendered.append((key_surface, what_surface, theme.color(tone), action))
        spacing = 22
        total = sum(k.get_width() + 12 + 6 + w.get_width() for k, w, _, _ in rendered) + spacing * (len(rendered) - 1)
        x = max(Layout.MARGIN, (lay.width - total) // 2)
        y = lay.help_y + 14
        self._help_items = []
        for key_surface, what_surface, color, action in rendered:
            chip = (x, y, key_surface.get_width() + 12, 24)
            pg.draw.rect(self._screen, color, chip, border_radius=5)
            self._blit(key_surface, x + 6, y + 12, "midleft")
            self._blit(what_surface, x + chip[2] + 6, y + 12, "midleft")
            width = chip[2] + 6 + what_surface.get_width()
            self._help_items.append(((x, y, width, 24), action))
            x += width + spacing
        hint = f"label as {self.session.labeller}{text.sym(' · ', ' | ')}click a clip to choose it{text.sym(' · ', ' | ')}{self.session.clips_dir}"
        self._blit(text.render(hint, "small", theme.faint), lay.width // 2, y + 32, "midtop")

    def _toast_surface(self) -> Any:
        assert self._text is not None and self._toast is not None
        return self._text.render(self._toast.text, "small", self._toast.color, bold=True)

    def _toast_fits(self) -> bool:
        left, right = self._header_free
        return self._toast_surface().get_width() + 28 <= right - left

    def _draw_toast(self, now: float) -> None:
        """Short messages in the middle of the header; long ones (errors) under the clips."""
        toast = self._toast
        if toast is None or time.monotonic() > toast.until:
            self._toast = None
            return
        pg, lay = self._pg, self.layout
        assert pg is not None
        surface = self._toast_surface()
        width, height = surface.get_width() + 28, 28
        if self._toast_fits():
            middle = (self._header_free[0] + self._header_free[1]) // 2
            rect = (middle - width // 2, lay.header_height // 2 - 2 - height // 2, width, height)
        else:
            rect = (lay.width // 2 - width // 2, lay.bar_y + 8, width, height)
        pg.draw.rect(self._screen, self.theme.panel, rect, border_radius=14)
        pg.draw.rect(self._screen, toast.color, rect, 1, border_radius=14)
        self._blit(surface, rect[0] + width // 2, rect[1] + height // 2, "center")
