"""What the viewer's window looks like, without pygame: the actions keys and clicks ask
for, the colours, the window geometry and the help bar's items."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from prefrl.feedback.choices import Choice
from prefrl.human.clips import ATARI_FRAME, RenderInfo


class Action(str, enum.Enum):
    """What a key or click asks the viewer to do."""

    LEFT = "left"
    RIGHT = "right"
    TIE = "tie"
    CANT_TELL = "cant_tell"
    REPLAY = "replay"
    UNDO = "undo"
    QUIT = "quit"

    @property
    def choice(self) -> Choice | None:
        return Choice(self.value) if self.value in {c.value for c in Choice} else None


@dataclass(frozen=True)
class Theme:
    """Colours (RGB) of the viewer: a dark, quiet background so the clips stand out.

    The answer colours are named after the :class:`~prefrl.feedback.choices.Choice`
    values, so :meth:`color` finds the colour of an answer and of a message's tone.
    """

    background: tuple[int, int, int] = (17, 19, 24)
    panel: tuple[int, int, int] = (27, 30, 38)
    frame_bg: tuple[int, int, int] = (8, 9, 12)
    text: tuple[int, int, int] = (232, 234, 240)
    dim: tuple[int, int, int] = (138, 145, 160)
    faint: tuple[int, int, int] = (70, 76, 90)
    left: tuple[int, int, int] = (84, 160, 255)
    right: tuple[int, int, int] = (255, 168, 56)
    tie: tuple[int, int, int] = (176, 132, 255)
    cant_tell: tuple[int, int, int] = (150, 156, 170)
    ok: tuple[int, int, int] = (86, 204, 128)
    warn: tuple[int, int, int] = (240, 190, 80)
    error: tuple[int, int, int] = (240, 96, 96)

    def color(self, tone: str) -> tuple[int, int, int]:
        """The colour named ``tone`` (a field name: ``warn``, ``error``, a choice value...)."""
        value: tuple[int, int, int] = getattr(self, tone)
        return value


@dataclass(frozen=True)
class Layout:
    """Window geometry for one clip box size."""

    width: int
    height: int
    box: tuple[int, int]
    left_box: tuple[int, int, int, int]
    right_box: tuple[int, int, int, int]
    header_height: int
    caption_y: int
    bar_y: int
    help_y: int

    MARGIN = 28
    GAP = 36
    HEADER = 58
    CAPTION = 34
    BAR = 40
    HELP = 72

    @classmethod
    def for_box(cls, box: tuple[int, int]) -> Layout:
        w, h = box
        width = 2 * w + cls.GAP + 2 * cls.MARGIN
        width = max(width, 1000)  # room for the help bar on one line
        x_left = (width - (2 * w + cls.GAP)) // 2
        caption_y = cls.HEADER + 12
        top = caption_y + cls.CAPTION
        bar_y = top + h + 12
        help_y = bar_y + cls.BAR
        return cls(
            width=width, height=help_y + cls.HELP, box=box,
            left_box=(x_left, top, w, h), right_box=(x_left + w + cls.GAP, top, w, h),
            header_height=cls.HEADER, caption_y=caption_y, bar_y=bar_y, help_y=help_y,
        )


def clip_box(info: RenderInfo, atari_scale: int = 3, mujoco_scale: float = 1.5,
             screen: tuple[int, int] | None = None) -> tuple[int, int]:
    """Size of each clip on screen: Atari ``atari_scale``x (at least 2x, smaller only if
    the screen is too small for it), MuJoCo renders ``mujoco_scale``x, plots 480x480."""
    if info.domain == "atari":
        height, width = ATARI_FRAME
        scale = atari_scale
        while screen is not None and scale > 2 and Layout.for_box((width * scale, height * scale)).height > screen[1] * 0.95:
            scale -= 1
        return width * scale, height * scale
    if info.domain == "mujoco":
        return round(info.render_size[0] * mujoco_scale), round(info.render_size[1] * mujoco_scale)
    return 480, 480


#: The help bar: ``(keys with arrows, keys in ASCII, what they do, colour name, action)``.
HELP_ITEMS: tuple[tuple[str, str, str, str, Action], ...] = (
    ("← / 1", "Left / 1", "left better", "left", Action.LEFT),
    ("→ / 2", "Right / 2", "right better", "right", Action.RIGHT),
    ("↑ / =", "Up / =", "equally good", "tie", Action.TIE),
    ("↓ / x", "Down / x", "can't tell", "cant_tell", Action.CANT_TELL),
    ("space", "space", "replay", "dim", Action.REPLAY),
    ("⌫ / u", "Bksp / u", "undo", "dim", Action.UNDO),
    ("q / esc", "q / esc", "quit", "dim", Action.QUIT),
)


def inside(pos: tuple[int, int], rect: tuple[int, int, int, int]) -> bool:
    """Whether the point ``pos`` lies in ``rect`` = ``(x, y, width, height)``."""
    x, y, w, h = rect
    return x <= pos[0] < x + w and y <= pos[1] < y + h


def mix(color: tuple[int, int, int], other: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    """``amount`` of ``color`` and the rest of ``other``."""
    return tuple(round(a * amount + b * (1 - amount)) for a, b in zip(color, other))  # type: ignore[return-value]
