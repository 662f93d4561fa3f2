"""Registration of the native LLaDA and Dream classes with transformers' Auto classes, for `import trl_diffusion`.

`import trl_diffusion` must make `AutoModelForCausalLM.from_pretrained(<official LLaDA or Dream checkpoint>)` build the
native classes (the official `config.json` carries an `auto_map` to remote code, which local registration
overrides), but registering anything with `AutoConfig` imports transformers' configuration code and torch (seconds),
which `import trl_diffusion` does not need otherwise. So the registration waits for transformers' own
`transformers.models.auto.configuration_auto`, the module every Auto class reads configs through:

- if it is already imported, [`register_native_classes`] runs at once;
- otherwise [`install`] puts a finder on `sys.meta_path` that, when that module is imported, lets it execute and then
  runs [`register_native_classes`]. `configuration_auto` imports `transformers.configuration_utils` before anything
  else, so by then the config machinery the native configs build on is fully initialised.

[`register_native_classes`] imports `trl_diffusion.models`, which registers the configs with `AutoConfig`; the model
classes follow when a config is first built (see `trl_diffusion.models.registration`).
"""

import importlib
import importlib.abc
import importlib.util
import sys


AUTO_CONFIG_MODULE = "transformers.models.auto.configuration_auto"


def register_native_classes() -> None:
    """Register the native configs with `AutoConfig` (imports `trl_diffusion.models`: configs only, no model code)."""
    importlib.import_module("trl_diffusion.models")


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of `AUTO_CONFIG_MODULE` so that registration follows its execution."""

    def find_spec(self, fullname, path, target=None):
        if fullname != AUTO_CONFIG_MODULE:
            return None
        # One use: removed before looking the module up, so that the lookup below does not come back here.
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            register_native_classes()

        spec.loader.exec_module = exec_module  # this loader instance serves this one spec
        return spec


def install() -> None:
    """Register now if transformers' Auto config module is imported, else as soon as it is."""
    if AUTO_CONFIG_MODULE in sys.modules:
        register_native_classes()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
