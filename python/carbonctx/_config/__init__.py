"""Every setting, read and validated once: ``configure(...)`` over ``CARBONCTX_*`` over defaults.

This is the one package that reads the process environment. Everything else receives values
(or, for zone detection, the environment mapping handed down from here):

==========================================  =======================================================
``CARBONCTX_CPU_BACKENDS``, ``_GPU``,        the sampler (:class:`Settings`, :func:`from_env`)
``_ESTIMATE``, ``_INTERVALS``, ``_OUTPUT``,
``_STRICT``, ``_SUMMARY``, ``_ON_FORK``,
``_AMDSMI``, ``_AMDSMI_LIBRARY``
``CARBONCTX_PUE``, ``_PROVIDERS``,           carbon intensity (:func:`carbon_settings`)
``_ELECTRICITYMAPS_TOKEN``, ``_<ID>_URL``,
``_CACHE_DIR`` (and ``XDG_CACHE_HOME``)
``CARBONCTX_ZONE`` (and cloud region, TZ)    zone rules, in ``_carbon.zones``, from :func:`environ`
``CARBONCTX_LOG_DIR``, ``_PROGRESS``         runs of epochs (:func:`log_dir`, :func:`progress`)
``CARBONCTX_RANK``, ``_LOCAL_RANK``,         this process's place in a distributed job (override
``_WORLD_SIZE``, ``_LOCAL_WORLD_SIZE``,      the launcher's variables; see ``_distributed.ranks``)
``_NODE``, ``_JOB``, ``_GPUS``               and the GPUs this rank reports
``CARBONCTX_REDFISH_URL``, ``_USER``,        the node's wall power from its BMC (:func:`redfish`)
``_PASSWORD``, ``_VERIFY``, ``_PERIOD``,
``_LAG_S``
==========================================  =======================================================

One module per job, lowest first (each imports only those above it):

==================  ===========================================================================
``settings``        :class:`Settings` and its field docs; backends, modes, the rank settings
``variables``       :func:`environ`, :func:`from_env` and the parsers of the variables' text
``carbon``          :func:`carbon_settings`: PUE, providers, credentials, URLs, cache, signal
``redfish``         :func:`redfish`: the BMC's address, account, certificate check, period, lag
``machine``         :func:`machine`: roots, TDP, source kinds, the visible-device variables
``validation``      :func:`build` and :func:`validate`: every setting checked once
``runs``            :func:`log_dir`, :func:`progress` (runs of epochs)
==================  ===========================================================================
"""

from carbonctx._config.carbon import (
    DEFAULT_URLS,
    PROVIDER_IDS,
    PUE_DEFAULT_SOURCE,
    SIGNALS,
    CarbonKwargs,
    CarbonSettings,
    carbon_settings,
    check_token,
    default_cache_dir,
    parse_deadline,
    parse_providers,
    parse_pue,
    parse_signal,
    parse_url,
)
from carbonctx._config.machine import MachineArgs, hip_visible_devices, machine
from carbonctx._config.redfish import RedfishArgs, redfish, redfish_lag
from carbonctx._config.runs import log_dir, progress
from carbonctx._config.settings import (
    BACKENDS,
    CPU_BACKENDS,
    ESTIMATE_MODES,
    FORK_MODES,
    LIVE_CARBON_SETTINGS,
    MAX_INTERVAL_S,
    MAX_REDFISH_LAG_S,
    RANK_SETTINGS,
    Settings,
)
from carbonctx._config.validation import build, validate
from carbonctx._config.variables import ROOT_VARIABLES, environ, from_env, parse_gpus

__all__ = [
    "BACKENDS",
    "CPU_BACKENDS",
    "DEFAULT_URLS",
    "ESTIMATE_MODES",
    "FORK_MODES",
    "LIVE_CARBON_SETTINGS",
    "MAX_INTERVAL_S",
    "MAX_REDFISH_LAG_S",
    "PROVIDER_IDS",
    "PUE_DEFAULT_SOURCE",
    "RANK_SETTINGS",
    "ROOT_VARIABLES",
    "SIGNALS",
    "CarbonKwargs",
    "CarbonSettings",
    "MachineArgs",
    "RedfishArgs",
    "Settings",
    "build",
    "carbon_settings",
    "check_token",
    "default_cache_dir",
    "environ",
    "from_env",
    "hip_visible_devices",
    "log_dir",
    "machine",
    "parse_deadline",
    "parse_gpus",
    "parse_providers",
    "parse_pue",
    "parse_signal",
    "parse_url",
    "progress",
    "redfish",
    "redfish_lag",
    "validate",
]
