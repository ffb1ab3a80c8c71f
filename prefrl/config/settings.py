"""The settings of a suite task: one frozen dataclass per preset section.

A preset holds everything that defines one suite task and how it is trained: the
environment and its wrappers, PPO, the reward model, the label schedule, the synthetic
teacher and the evaluation. A TOML file sets any subset of the fields, the rest take the
defaults here (the paper's values, see ``../shared/design.md``); reading the files and
``--set`` overrides is :mod:`prefrl.config.loading`, the sanity checks
:mod:`prefrl.config.validation`.

Every field is declared with :func:`setting`, which puts its one-line meaning in
``dataclasses.Field.metadata["doc"]``; :func:`setting_docs` reads them back, e.g. to write
the reference of the preset keys.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

DOMAINS = ("mujoco", "atari", "classic")
#: ppo.activation's names and the torch.nn modules they stand for (tanh is SB3's default).
ACTIVATIONS = {"tanh": "Tanh", "relu": "ReLU"}
QUERY_SELECTIONS = ("uniform", "disagreement", "entropy")
REWARD_ARCHITECTURES = ("mlp", "atari_cnn")
#: How the ensemble is refitted beside PPO (prefrl.reward.fitter.RewardFitter).
FIT_MODES = ("background", "inline", "lagged")
VEC_ENVS = ("dummy", "subproc", "ale")
ON_TERMINATION = ("continue", "reset", "show_then_reset")
#: Settings for which an infinite value means something (a perfectly rational teacher,
#: a teacher that never skips).
INFINITE_ALLOWED = ("teacher.beta", "teacher.skip_threshold")
#: Largest whole number a setting may have (integers beyond it do not fit numpy, torch or
#: SQLite, and are exactly representable as TOML floats like ``1e9`` only up to here).
MAX_INT = 2**53

#: Key of a field's one-line meaning in ``dataclasses.Field.metadata``.
DOC = "doc"


def setting(default: Any, doc: str) -> Any:
    """A settings field: its default and its one-line meaning (``metadata["doc"]``).

    :param default: the value when a preset does not set it (immutable: tuples, not lists)
    :param doc: what the setting means, one line, for the reference of the preset keys
    """
    return field(default=default, metadata={DOC: doc})


def setting_docs(cls: type) -> dict[str, str]:
    """``{field name: one-line meaning}`` of a settings dataclass, in declaration order.

    :param cls: one of :data:`SECTIONS`' classes, or :class:`Preset`
    """
    return {f.name: f.metadata[DOC] for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class TaskSettings:
    """``[task]``: the environment, its wrapper chain and the clip geometry."""

    name: str = setting("", "preset name, e.g. hopper (defaults to the file stem)")
    description: str = setting("", "one line shown by `prefrl tasks`")
    env_id: str = setting("", "the underlying Gymnasium id, e.g. Hopper-v5 or ALE/Pong-v5")
    domain: str = setting("mujoco", "mujoco, atari or classic")
    horizon: int = setting(
        1000,
        "fixed length of a training episode in agent steps; early termination is removed because "
        "variable episode length leaks reward",
    )
    clip_length: int = setting(50, "agent steps per segment shown to the teacher (at most task.horizon)")
    termination_penalty: float = setting(
        0.0,
        "subtracted from the training reward of each step flagged after_termination (fallen over, game "
        "over), in both arms and so in what the synthetic teacher judges; evaluation returns never include it",
    )
    mask_regions: tuple[tuple[int, int, int, int], ...] = setting(
        (),
        "Atari: [top, bottom, left, right] rectangles of the raw 210x160 frame blacked out (score and "
        "other counters) before preprocessing",
    )
    frame_skip: int = setting(4, "Atari: frame skip (max-pooled over the last two frames)")
    noop_max: int = setting(30, "Atari: at most this many no-op actions after reset")
    screen_size: int = setting(84, "Atari: side of the square grayscale observation")
    frame_stack: int = setting(4, "Atari: number of stacked frames")
    fire_reset: bool = setting(False, "Atari: press FIRE after reset, for games that need it to start")
    fire_after_life_loss: bool = setting(
        False,
        "Atari: the agent's next action after a lost life is FIRE, for games that wait for it (Breakout's "
        "next ball), so a policy cannot stop the game by never pressing it (as SB3's and CleanRL's chains)",
    )
    show_unmasked_frames: bool = setting(
        False,
        "Atari: show people the frames with the score (the agent and reward model still see it blacked "
        "out); by default people see what the agent sees, so labels cannot use what it cannot observe",
    )
    for_tests: bool = setting(False, "a small preset for fast tests, not part of the benchmark suite")
    sticky_action_prob: float = setting(
        0.0,
        "Atari: probability that the emulator repeats the previous action instead of the new one (ALE's "
        "repeat_action_probability); 0 as in the paper (ALE v5 would default to 0.25)",
    )
    on_termination: str = setting(
        "continue",
        "when the underlying task ends (fallen over, game over): continue stepping the same simulation "
        "(MuJoCo), reset it in place (Atari, CartPole), or show_then_reset: one more step shows the ended "
        "state (its action ignored, the penalty charged there), then reset in place; either way the "
        "episode runs to task.horizon",
    )


@dataclass(frozen=True)
class PPOSettings:
    """``[ppo]``: Stable-Baselines3 PPO, identical for the learned and the true-reward arm."""

    total_steps: int = setting(1_000_000, "environment (agent) steps of one run")
    policy: str = setting("MlpPolicy", "SB3 policy name: MlpPolicy or CnnPolicy")
    n_envs: int = setting(1, "parallel environments")
    vec_env: str = setting(
        "dummy",
        "dummy (in process), subproc or, Atari only, ale (the same envs on the emulators directly, "
        "prefrl.envs.ale_vec_env)",
    )
    n_steps: int = setting(2048, "agent steps per env in each PPO rollout")
    batch_size: int = setting(64, "agent steps per PPO minibatch")
    n_epochs: int = setting(10, "passes over each rollout")
    learning_rate: float = setting(3e-4, "Adam step size of the policy and value nets")
    gamma: float = setting(0.99, "discount factor")
    gae_lambda: float = setting(0.95, "lambda of generalised advantage estimation")
    clip_range: float = setting(0.2, "PPO's clipping range of the probability ratio")
    ent_coef: float = setting(0.0, "weight of the entropy bonus in the loss")
    vf_coef: float = setting(0.5, "weight of the value loss in the loss")
    max_grad_norm: float = setting(0.5, "gradients are clipped to this global norm")
    net_arch: tuple[int, ...] = setting((64, 64), "hidden layers of the policy and value nets")
    normalize_observations: bool = setting(True, "wrap in VecNormalize for observations")
    normalize_rewards: bool = setting(False, "let VecNormalize scale the reward the agent sees")
    clip_true_reward: bool = setting(False, "clip the true reward to [-1, 1] in the true arm (Atari)")
    torch_threads: int = setting(
        1, "torch CPU threads of the run (0 = torch's default); small MLPs run fastest on one thread"
    )
    log_std_init: float = setting(
        0.0,
        "initial log standard deviation of a continuous policy's actions (SB3's default 0: std 1; "
        "rl-baselines3-zoo's HalfCheetah and Hopper use -2)",
    )
    ortho_init: bool = setting(True, "orthogonal initialisation of the policy and value nets (SB3's default)")
    activation: str = setting(
        "tanh", "hidden-layer activation of the policy and value nets: tanh (SB3's default) or relu"
    )


@dataclass(frozen=True)
class RewardSettings:
    """``[reward]``: the reward-predictor ensemble and how it is fitted."""

    architecture: str = setting("mlp", "mlp on (observation, action) or the paper's atari_cnn")
    ensemble_size: int = setting(3, "members, each trained on its own bootstrap resample")
    hidden_sizes: tuple[int, ...] = setting((64, 64), "MLP hidden layers")
    use_actions: bool = setting(True, "feed the action to the MLP beside the observation")
    output_std: float = setting(1.0, "each member's output is normalised to mean 0 and this std")
    learning_rate: float = setting(3e-4, "Adam step size")
    batch_size: int = setting(64, "clip pairs per minibatch")
    epochs_per_update: int = setting(10, "passes over the labels each time new labels arrived")
    max_pairs_per_update: int = setting(
        0,
        "at most this many clip pairs per member in one refit (0 = no cap): once the labels outnumber it a "
        "refit costs the same however many arrive, so a slow network keeps pace with PPO (pretraining is "
        "not capped)",
    )
    initial_l2: float = setting(
        0.001,
        "starting L2 strength, adapted so that validation loss stays between reward.l2_ratio_low and "
        "reward.l2_ratio_high times the training loss",
    )
    validation_fraction: float = setting(1.0 / math.e, "share of labels held out to tune L2 (1/e in the paper)")
    l2_ratio_low: float = setting(1.1, "L2 strength goes down while validation loss is below this times training loss")
    l2_ratio_high: float = setting(1.5, "L2 strength goes up while validation loss is above this times training loss")
    random_answer_prob: float = setting(0.1, "assumed chance that the labeller answered at random")
    label_buffer_size: int = setting(0, "train on the newest this many labels (0 = all)")
    batch_norm: bool = setting(True, "CNN only: batch normalisation after each conv")
    dropout: float = setting(
        0.5,
        "CNN only: dropout probability after each convolution block (the paper's 0.5; the Atari presets use "
        "0, since 0.5 kept the CNN from learning a few hundred labels in the refits a CPU run affords: "
        "docs/results.md, findings)",
    )
    frames_per_clip: int = setting(
        0,
        "frames of each clip used by the loss per minibatch (random) and by query selection's scores "
        "(evenly spaced); 0 = all",
    )
    fit_mode: str = setting(
        "background",
        "background: refit in a thread beside PPO, the next rewards wait for it (exactly the rewards of "
        "inline, where the agent waits at once); lagged: the agent's rewards come from the previous weights "
        "until the next update point, so a refit may take a whole update interval without stalling the "
        "agent (the paper's asynchronous training; for the slow Atari CNN)",
    )


@dataclass(frozen=True)
class LabelSettings:
    """``[labels]``: the label schedule and the choice of queries."""

    budget: int = setting(700, "labels for the whole run")
    initial_labels: int = setting(175, "labels collected from the random policy before RL starts")
    rate_constant: float = setting(2e6, "c in the label rate c / (T + c) over env steps T")
    pretrain_epochs: int = setting(200, "reward-model epochs on the initial labels before RL starts")
    query_selection: str = setting(
        "disagreement",
        "uniform, disagreement (ensemble variance of the predicted preference) or entropy (of the mean "
        "predicted preference)",
    )
    oversample: int = setting(10, "candidate pairs drawn per query asked")
    segment_buffer_size: int = setting(1000, "most recent segments kept to draw queries from")
    query_window: int = setting(
        0,
        "env steps: every query shows at least one clip the agent made in the last this many steps (its "
        "current behaviour), the other clip from the whole segment buffer; 0 = both from the whole buffer",
    )
    update_every_steps: int = setting(
        5000,
        "env steps between rounds of queries and reward fitting (each round happens at the next PPO "
        "rollout end)",
    )


@dataclass(frozen=True)
class TeacherSettings:
    """``[teacher]``: the synthetic teacher (B-Pref); the defaults are a perfectly rational oracle.

    Returns are divided by the running standard deviation of the segment returns the
    teacher has seen before ``beta`` and the thresholds apply, so that the same
    settings mean the same irrationality on every task.
    """

    beta: float = setting(math.inf, "Boltzmann rationality; inf = always the larger return")
    mistake_prob: float = setting(0.0, "probability of flipping the answer")
    skip_threshold: float = setting(-math.inf, "\"can't tell\" when both normalised returns are below this")
    equal_threshold: float = setting(0.0, "\"tie\" when normalised returns differ by less than this")
    gamma: float = setting(1.0, "myopia: step t of an H-step clip weighs gamma**(H-1-t)")


@dataclass(frozen=True)
class EvalSettings:
    """``[eval]``: evaluation on the true return under the task's real rules."""

    every_steps: int = setting(50_000, "evaluate every this many env steps (and at the end)")
    episodes: int = setting(5, "evaluation episodes each time")
    max_episode_steps: int = setting(0, "cap on an evaluation episode (0 = the env's own limit)")
    deterministic: bool = setting(True, "evaluate the policy's most likely action instead of sampling")


@dataclass(frozen=True)
class Preset:
    """One suite task: every setting of a run except arm, seed and paths."""

    task: TaskSettings = field(metadata={DOC: "[task]: the environment, its wrappers and the clips"})
    ppo: PPOSettings = field(default_factory=PPOSettings, metadata={DOC: "[ppo]: the RL algorithm"})
    reward: RewardSettings = field(default_factory=RewardSettings, metadata={DOC: "[reward]: the reward model"})
    labels: LabelSettings = field(default_factory=LabelSettings, metadata={DOC: "[labels]: the label schedule"})
    teacher: TeacherSettings = field(
        default_factory=TeacherSettings, metadata={DOC: "[teacher]: the synthetic teacher"}
    )
    eval: EvalSettings = field(default_factory=EvalSettings, metadata={DOC: "[eval]: the evaluation"})

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists, infinities as ``"inf"``), e.g. for ``config.json``."""
        return _jsonable(dataclasses.asdict(self))


#: The preset's sections: TOML table name -> settings class.
SECTIONS: dict[str, type] = {
    "task": TaskSettings,
    "ppo": PPOSettings,
    "reward": RewardSettings,
    "labels": LabelSettings,
    "teacher": TeacherSettings,
    "eval": EvalSettings,
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value
