"""prefrl: deep reinforcement learning from preferences (Christiano et al., 2017).

The package's folders are the stages of the data flow, lowest first: ``util``, ``config``,
``data``, ``envs`` and ``feedback``, ``reward`` and ``human``, ``training``, ``analysis``,
``experiments``, ``cli``. A lower stage never imports a higher one (an import-linter contract
in ``pyproject.toml``, checked by ``make test``).

Importing the package registers the suite's tasks with Gymnasium, so
``gym.make("prefrl/Hopper")`` works after ``import prefrl``.
"""

from prefrl.envs.registration import register_suite as _register_suite

__version__ = "0.1.0"

_register_suite()
