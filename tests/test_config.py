"""Config.resolve: opt-out rules, environment overrides, clear errors. Never reads os.environ."""

from __future__ import annotations

import argparse

import pytest

from reqtelemetry import Config, Telemetry, add_opt_out_argument
from reqtelemetry.config import (
    DEFAULT_FLUSH_INTERVAL,
    OPT_OUT_FLAG,
    redacted_url,
    scrubbed,
    url_secrets,
)
from reqtelemetry.recorder import DEFAULT_MAX_KEYS


def resolve(environ=None, argv=(), **options):
    return Config.resolve(environ=environ or {}, argv=list(argv), **options)


def test_defaults():
    config = resolve()
    assert config.enabled and not config.opt_out
    assert config.opt_out_reason is None
    assert config.max_keys == DEFAULT_MAX_KEYS
    assert config.flush_interval == DEFAULT_FLUSH_INTERVAL
    assert config.group_unmatched is True
    assert config.record_query is False
    assert config.exclude_paths == () and config.exclude_prefixes == ()


@pytest.mark.parametrize("variable", ["SQA_OPT_OUT", "REQTELEMETRY_OPT_OUT"])
@pytest.mark.parametrize("value", ["1", "true", "YES", "on", "True", " on "])
def test_opt_out_variables_true(variable, value):
    config = resolve({variable: value})
    assert config.opt_out and not config.enabled
    assert variable in config.opt_out_reason


@pytest.mark.parametrize("variable", ["SQA_OPT_OUT", "REQTELEMETRY_OPT_OUT"])
@pytest.mark.parametrize("value", ["0", "false", "", "no", "off"])
def test_opt_out_variables_false_mean_not_set(variable, value):
    config = resolve({variable: value})
    assert config.enabled and config.opt_out_reason is None


@pytest.mark.parametrize("variable", ["SQA_OPT_OUT", "REQTELEMETRY_OPT_OUT", "DO_NOT_TRACK"])
@pytest.mark.parametrize("value", ["y", "Y", "disable", "2", "please", "TRUE "])
def test_an_opt_out_value_that_is_no_clear_no_means_off(variable, value):
    # SQA_OPT_OUT=y meant off: a value misread must err on the side of sending nothing.
    config = resolve({variable: value})
    assert config.opt_out and variable in config.opt_out_reason


@pytest.mark.parametrize("flag", ["--sqa-opt-out", "--sqa-opt-out=1", "--sqa-opt-out=true"])
def test_the_opt_out_flag_with_a_value(flag):
    assert resolve(argv=["myapp", flag]).opt_out


@pytest.mark.parametrize("flag", ["--sqa-opt-out=0", "--sqa-opt-out=false", "--sqa-opt-outs"])
def test_the_opt_out_flag_saying_no(flag):
    assert resolve(argv=["myapp", flag]).enabled


@pytest.mark.parametrize("value", ["1", "true", " 1 "])
def test_do_not_track(value):
    config = resolve({"DO_NOT_TRACK": value})
    assert config.opt_out
    assert "DO_NOT_TRACK" in config.opt_out_reason


@pytest.mark.parametrize("value", ["0", "", " ", "false", "no", "off"])
def test_do_not_track_unset_values(value):
    assert resolve({"DO_NOT_TRACK": value}).enabled


def test_opt_out_in_code():
    config = resolve(opt_out=True)
    assert config.opt_out
    assert "opt_out=True" in config.opt_out_reason


def test_opt_out_flag_in_argv():
    config = resolve(argv=["myapp", "serve", OPT_OUT_FLAG])
    assert OPT_OUT_FLAG == "--sqa-opt-out"
    assert config.opt_out
    assert OPT_OUT_FLAG in config.opt_out_reason
    assert resolve(argv=["myapp", "serve"]).enabled


def test_add_opt_out_argument():
    parser = add_opt_out_argument(argparse.ArgumentParser(prog="myapp"))
    assert parser.parse_args([]).sqa_opt_out is False
    args = parser.parse_args(["--sqa-opt-out"])
    assert args.sqa_opt_out is True
    assert resolve(opt_out=args.sqa_opt_out).opt_out
    assert resolve(opt_out=parser.parse_args([]).sqa_opt_out).enabled
    assert "--sqa-opt-out" in parser.format_help()


def test_environment_opt_out_wins_over_code():
    config = resolve({"SQA_OPT_OUT": "1"}, opt_out=False)
    assert config.opt_out
    assert "SQA_OPT_OUT" in config.opt_out_reason


def test_environment_cannot_switch_telemetry_on():
    for environ in ({"SQA_OPT_OUT": "0"}, {"REQTELEMETRY_OPT_OUT": "false"}, {"DO_NOT_TRACK": "0"}):
        assert resolve(environ, opt_out=True).opt_out
        assert resolve(environ, argv=[OPT_OUT_FLAG]).opt_out


def test_environment_overrides_win_over_code():
    environ = {
        "REQTELEMETRY_ENDPOINT": "https://collector.example/v1",
        "REQTELEMETRY_APP_NAME": "env-app",
        "REQTELEMETRY_APP_VERSION": "9.9",
        "REQTELEMETRY_EXCLUDE_PATHS": "/health, /ready,,",
        "REQTELEMETRY_EXCLUDE_PREFIXES": "/static/",
        "REQTELEMETRY_ALLOWED_PATH_SEGMENTS": "api,v1",
        "REQTELEMETRY_MAX_KEYS": "20",
        "REQTELEMETRY_FLUSH_INTERVAL": "60.5",
        "REQTELEMETRY_DEBUG": "yes",
    }
    config = resolve(
        environ,
        endpoint="https://code.example",
        app_name="code-app",
        app_version="1.0",
        exclude_paths=["/code"],
        exclude_prefixes=["/code/"],
        allowed_path_segments=["code", "api"],
        max_keys=10,
        flush_interval=5,
        debug=False,
    )
    assert config.endpoint == "https://collector.example/v1"
    assert config.app_name == "env-app"
    assert config.app_version == "9.9"
    # What is excluded adds up; an allow-list can only shrink to what code allows.
    assert config.exclude_paths == ("/code", "/health", "/ready")
    assert config.exclude_prefixes == ("/code/", "/static/")
    assert config.allowed_path_segments == ("api",)
    assert config.max_keys == 20
    assert config.flush_interval == 60.5
    assert config.debug is True
    assert config.enabled


def test_empty_environment_values_do_not_override():
    config = resolve(
        {"REQTELEMETRY_APP_NAME": "", "REQTELEMETRY_MAX_KEYS": "", "REQTELEMETRY_DEBUG": ""},
        app_name="code-app",
        max_keys=7,
    )
    assert config.app_name == "code-app"
    assert config.max_keys == 7
    assert config.debug is False


@pytest.mark.parametrize("blank", [" ", "\t", " \n "])
def test_blank_environment_values_do_not_override(blank):
    # README: "an empty or blank variable counts as unset"; a stray space in a
    # compose file must neither stop the app nor replace the code's value.
    names = (
        "ENDPOINT",
        "APP_NAME",
        "APP_VERSION",
        "APP_GIT_HASH",
        "APP_BUILD_TIME",
        "DEPLOYMENT_ID_PATH",
        "MAX_KEYS",
        "FLUSH_INTERVAL",
        "MAX_PAYLOAD_BYTES",
        "TIMEOUT",
    )
    config = resolve(
        {f"REQTELEMETRY_{name}": blank for name in names},
        endpoint="http://127.0.0.1:9/v1",
        app_version="1.2.3",
        max_keys=7,
        flush_interval=120.0,
    )
    assert config.endpoint == "http://127.0.0.1:9/v1"
    assert config.app_version == "1.2.3"
    assert config.app_name is None and config.deployment_id_path is None
    assert config.max_keys == 7 and config.flush_interval == 120.0
    assert config.enabled


def test_environment_values_are_taken_without_surrounding_blanks():
    config = resolve({"REQTELEMETRY_APP_VERSION": " 2.0 ", "REQTELEMETRY_MAX_KEYS": " 9 "})
    assert config.app_version == "2.0" and config.max_keys == 9


def test_code_lists_accept_comma_strings():
    config = resolve(exclude_paths="/health, /ready", allowed_query_keys=["page", " q "])
    assert config.exclude_paths == ("/health", "/ready")
    assert config.allowed_query_keys == ("page", "q")


@pytest.mark.parametrize(
    ("environ", "match"),
    [
        ({"REQTELEMETRY_MAX_KEYS": "lots"}, "REQTELEMETRY_MAX_KEYS"),
        ({"REQTELEMETRY_MAX_KEYS": "1.5"}, "REQTELEMETRY_MAX_KEYS must be a whole number"),
        ({"REQTELEMETRY_FLUSH_INTERVAL": "hourly"}, "REQTELEMETRY_FLUSH_INTERVAL"),
        ({"REQTELEMETRY_DEBUG": "maybe"}, "REQTELEMETRY_DEBUG"),
        ({"REQTELEMETRY_MAX_KEYS": "0"}, "REQTELEMETRY_MAX_KEYS"),
        ({"REQTELEMETRY_FLUSH_INTERVAL": "-1"}, "REQTELEMETRY_FLUSH_INTERVAL"),
        ({"REQTELEMETRY_FLUSH_INTERVAL": "nan"}, "REQTELEMETRY_FLUSH_INTERVAL"),
        ({"REQTELEMETRY_FLUSH_INTERVAL": "inf"}, "REQTELEMETRY_FLUSH_INTERVAL"),
        ({"REQTELEMETRY_FLUSH_INTERVAL": "1e10"}, "REQTELEMETRY_FLUSH_INTERVAL"),
        ({"REQTELEMETRY_TIMEOUT": "0"}, "REQTELEMETRY_TIMEOUT"),
        ({"REQTELEMETRY_TIMEOUT": "-5"}, "REQTELEMETRY_TIMEOUT"),
        ({"REQTELEMETRY_TIMEOUT": "nan"}, "REQTELEMETRY_TIMEOUT"),
        ({"REQTELEMETRY_TIMEOUT": "inf"}, "REQTELEMETRY_TIMEOUT"),
        # Positive, but a typo or a unit mistake: the flusher reported in a
        # busy loop (11,227 reports in 2 s), and no attempt had time to finish.
        ({"REQTELEMETRY_FLUSH_INTERVAL": "1e-320"}, "REQTELEMETRY_FLUSH_INTERVAL.*at least 0.01"),
        ({"REQTELEMETRY_TIMEOUT": "0.001"}, "REQTELEMETRY_TIMEOUT.*at least 0.01"),
        ({"REQTELEMETRY_SHUTDOWN_TIMEOUT": "soon"}, "REQTELEMETRY_SHUTDOWN_TIMEOUT"),
        ({"REQTELEMETRY_SHUTDOWN_TIMEOUT": "-1"}, "REQTELEMETRY_SHUTDOWN_TIMEOUT"),
        ({"REQTELEMETRY_SHUTDOWN_TIMEOUT": "nan"}, "REQTELEMETRY_SHUTDOWN_TIMEOUT"),
        ({"REQTELEMETRY_EXCLUDE_PREFIXES": "static/"}, "REQTELEMETRY_EXCLUDE_PREFIXES"),
        # Values that parse but cannot work name the variable too, not only
        # the option (which the operator setting the variable may not know).
        ({"REQTELEMETRY_MAX_PAYLOAD_BYTES": "100"}, "REQTELEMETRY_MAX_PAYLOAD_BYTES"),
        ({"REQTELEMETRY_ENDPOINT": "ftp://x"}, "REQTELEMETRY_ENDPOINT"),
        ({"REQTELEMETRY_PROXY": "proxy:3128"}, "REQTELEMETRY_PROXY"),
        ({"REQTELEMETRY_CA_BUNDLE": "/nonexistent/ca.pem"}, "REQTELEMETRY_CA_BUNDLE"),
        ({"REQTELEMETRY_DISABLE": "bogus"}, "REQTELEMETRY_DISABLE"),
    ],
)
def test_bad_environment_values_give_clear_errors(environ, match):
    with pytest.raises(ValueError, match=match):
        resolve(environ)


def test_a_variable_is_named_only_for_the_error_it_causes():
    # Each override was tried with the code's options, and the first that
    # failed was blamed: for the code's own bad value, or another variable's.
    with pytest.raises(ValueError) as code_at_fault:
        resolve({"REQTELEMETRY_FLUSH_INTERVAL": "120"}, disabled_traits=["hostnme"])
    assert str(code_at_fault.value).startswith("unknown trait name(s) to withhold: hostnme")
    with pytest.raises(ValueError) as code_at_fault:
        resolve({"REQTELEMETRY_APP_NAME": "shop"}, max_keys=0)
    assert str(code_at_fault.value).startswith("max_keys must be at least 1")
    with pytest.raises(ValueError) as two_bad:
        resolve({"REQTELEMETRY_ENDPOINT": "ftp://x", "REQTELEMETRY_MAX_KEYS": "0"})
    # A list the variable adds to, whose bad item is the code's own.
    with pytest.raises(ValueError, match=r"^exclude_prefixes entries must start with '/'"):
        resolve(
            {"REQTELEMETRY_EXCLUDE_PREFIXES": "/x", "REQTELEMETRY_MAX_KEYS": "500"},
            exclude_prefixes=["api"],
            max_keys=0,
        )
    # The code's bad value set right by a variable, and another variable bad.
    with pytest.raises(ValueError, match=r"^REQTELEMETRY_TIMEOUT: timeout must"):
        resolve({"REQTELEMETRY_MAX_KEYS": "500", "REQTELEMETRY_TIMEOUT": "0"}, max_keys=0)
    variable, about = str(two_bad.value).split(": ", 1)
    assert (
        variable
        == {"max_keys": "REQTELEMETRY_MAX_KEYS", "endpoint": "REQTELEMETRY_ENDPOINT"}[
            about.split(" ")[0]
        ]
    )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_keys": 0}, "max_keys"),
        ({"flush_interval": 0}, "flush_interval"),
        # A collector's next_interval is held to it: 1e-300 made a busy loop.
        ({"min_flush_interval": 1e-320}, "min_flush_interval must be at least 0.01"),
        ({"flush_interval": float("inf")}, "flush_interval"),
        ({"max_flush_interval": float("inf")}, "max_flush_interval"),
        ({"timeout": 0}, "timeout"),
        ({"shutdown_timeout": -1}, "shutdown_timeout"),
        ({"shutdown_timeout": float("nan")}, "shutdown_timeout"),
        ({"retry_base_delay": float("nan")}, "retry_base_delay"),
        ({"exclude_prefixes": ["static/"]}, "exclude_prefixes"),
    ],
)
def test_bad_code_values_give_clear_errors(options, match):
    with pytest.raises(ValueError, match=match):
        resolve(**options)


def test_unknown_options_are_type_errors():
    with pytest.raises(TypeError, match="endpont"):
        resolve(endpont="https://typo.example")
    with pytest.raises(TypeError, match="opt_out_reason"):
        resolve(opt_out_reason="because")


def test_config_is_frozen():
    config = resolve()
    with pytest.raises(AttributeError):
        config.opt_out = True


def test_telemetry_with_config_and_options_is_an_error():
    with pytest.raises(TypeError):
        Telemetry(config=resolve(), app_name="x")


def test_opted_out_telemetry_is_disabled():
    telemetry = Telemetry(config=resolve({"SQA_OPT_OUT": "1"}))
    assert not telemetry.enabled
    assert "SQA_OPT_OUT" in repr(telemetry)


def test_boolean_overrides_can_only_narrow_what_is_collected():
    widen = {"REQTELEMETRY_GROUP_UNMATCHED": "false", "REQTELEMETRY_RECORD_QUERY": "ON"}
    config = Config.resolve(environ=widen, argv=[])
    assert config.group_unmatched is True  # the environment cannot split scanners' 404s
    assert config.record_query is False  # ... nor start recording query strings
    narrow = {"REQTELEMETRY_GROUP_UNMATCHED": "true", "REQTELEMETRY_RECORD_QUERY": "off"}
    config = Config.resolve(environ=narrow, argv=[], group_unmatched=False, record_query=True)
    assert config.group_unmatched is True
    assert config.record_query is False
    # Empty means "not set": the code's value stands.
    config = Config.resolve(environ={"REQTELEMETRY_GROUP_UNMATCHED": ""}, argv=[])
    assert config.group_unmatched is True
    config = Config.resolve(environ=widen, argv=[], group_unmatched=False, record_query=True)
    assert config.group_unmatched is False and config.record_query is True


def test_allowed_query_keys_from_the_environment_only_narrow_the_codes():
    environ = {"REQTELEMETRY_ALLOWED_QUERY_KEYS": "page, sort"}
    config = Config.resolve(environ=environ, argv=[], allowed_query_keys=["page", "sort", "q"])
    assert config.allowed_query_keys == ("page", "sort")
    assert Config.resolve(environ=environ, argv=[]).allowed_query_keys == ()


CODE_LISTS = {
    "disabled_traits": ["memory_rss_bytes", "app_git_hash"],
    "exclude_paths": ["/healthz"],
    "exclude_prefixes": ["/static/"],
    "allowed_path_segments": ["api"],
    "allowed_query_keys": ["page"],
}


@pytest.mark.parametrize(
    "variable",
    [
        "DISABLE",
        "EXCLUDE_PATHS",
        "EXCLUDE_PREFIXES",
        "ALLOWED_PATH_SEGMENTS",
        "ALLOWED_QUERY_KEYS",
    ],
)
@pytest.mark.parametrize("blank", ["", " ", " , ,"])
def test_a_blank_list_variable_is_not_set(variable, blank):
    config = resolve({f"REQTELEMETRY_{variable}": blank}, **CODE_LISTS)
    assert config == resolve({}, **CODE_LISTS)


def test_withheld_traits_and_excluded_paths_from_the_environment_add_to_the_codes():
    environ = {
        "REQTELEMETRY_DISABLE": "cpu_count, app_git_hash",
        "REQTELEMETRY_EXCLUDE_PATHS": "/ready",
        "REQTELEMETRY_EXCLUDE_PREFIXES": "/admin/",
    }
    config = resolve(environ, **CODE_LISTS)
    assert config.disabled_traits == ("memory_rss_bytes", "app_git_hash", "cpu_count")
    assert config.exclude_paths == ("/healthz", "/ready")
    assert config.exclude_prefixes == ("/static/", "/admin/")


def test_metric_name_cap_cannot_pass_the_wire_format_limit():
    with pytest.raises(ValueError, match="max_metrics"):
        Config.resolve(environ={}, argv=[], max_metrics=101)


def test_unknown_withheld_trait_is_refused_at_start_with_the_valid_names():
    with pytest.raises(ValueError, match="memory_rss_bytes"):
        Config.resolve(environ={"REQTELEMETRY_DISABLE": "memory"}, argv=[])


BAD_ENVIRONMENT_VALUES = [
    {"REQTELEMETRY_MAX_KEYS": "1e3"},
    {"REQTELEMETRY_FLUSH_INTERVAL": "1h"},
    {"REQTELEMETRY_DISABLE": "memory"},
    {"REQTELEMETRY_ENDPOINT": "collector.internal:8600"},
    {"REQTELEMETRY_DEBUG": "y"},
    {"REQTELEMETRY_TIMEOUT": "0"},
]


@pytest.mark.parametrize("bad", BAD_ENVIRONMENT_VALUES)
@pytest.mark.parametrize(
    "opted_out",
    [{"SQA_OPT_OUT": "true"}, {"DO_NOT_TRACK": "1"}, {"REQTELEMETRY_OPT_OUT": "yes"}],
)
def test_opted_out_a_bad_environment_value_does_not_stop_the_app(bad, opted_out, caplog):
    caplog.set_level("DEBUG", logger="reqtelemetry")
    config = resolve({**opted_out, **bad}, app_name="code-app")
    assert config.opt_out and not config.enabled
    assert next(iter(opted_out)) in config.opt_out_reason
    assert config.app_name == "code-app"
    assert len(caplog.records) <= 1  # at most one line says what was ignored
    if caplog.records:  # and names the variable that cannot be used
        assert f"{next(iter(bad))} cannot be used" in caplog.records[0].getMessage()


@pytest.mark.parametrize("bad", BAD_ENVIRONMENT_VALUES)
def test_opted_out_by_argv_or_code_a_bad_environment_value_is_ignored_too(bad):
    assert resolve(bad, argv=[OPT_OUT_FLAG]).opt_out
    assert resolve(bad, opt_out=True).opt_out


@pytest.mark.parametrize("bad", BAD_ENVIRONMENT_VALUES)
def test_enabled_a_bad_environment_value_is_still_a_clear_error(bad):
    with pytest.raises(ValueError):
        resolve(bad)


def test_opted_out_a_bad_value_in_code_is_the_same_error_as_when_enabled():
    with pytest.raises(ValueError, match="max_keys"):
        resolve({"SQA_OPT_OUT": "1"}, max_keys=0)


def test_opted_out_telemetry_starts_with_a_bad_environment_value(monkeypatch):
    monkeypatch.setenv("SQA_OPT_OUT", "true")
    monkeypatch.setenv("REQTELEMETRY_MAX_KEYS", "1e3")
    telemetry = Telemetry(app_name="x")
    assert not telemetry.enabled
    assert telemetry.flusher is None


@pytest.mark.parametrize(
    "endpoint",
    ["http://collector..example.org", "http://x:abc", "http://", "http://127.0.0.1:99999"],
)
def test_an_endpoint_httpx_cannot_use_is_refused_at_start(endpoint):
    with pytest.raises(ValueError, match="endpoint"):
        resolve(endpoint=endpoint)
    with pytest.raises(ValueError, match="endpoint"):
        Telemetry(config=Config(endpoint=endpoint))


@pytest.mark.parametrize(
    "endpoint", ["https://collector.example.org/base", "http://127.0.0.1:8600", "http://[::1]:80"]
)
def test_ordinary_endpoints_are_accepted(endpoint):
    assert resolve(endpoint=endpoint).endpoint == endpoint


@pytest.mark.parametrize(
    "field", ["allowed_path_segments", "allowed_query_keys", "exclude_paths", "disabled_traits"]
)
def test_a_bare_string_where_a_list_belongs_is_refused_or_split(field):
    # Taken as its characters, "users" would let the segments u, s, e, r through unhashed.
    with pytest.raises(ValueError, match=f"{field} must be a list of strings"):
        Config(**{field: "users"}).validate()
    # Telemetry resolves a hand-built config as it does keyword options: split at commas.
    value = {"disabled_traits": "cpu_count", "exclude_paths": "/users"}.get(field, "users")
    assert getattr(Telemetry(config=Config(**{field: value})).config, field) == (value,)


@pytest.mark.parametrize("opt_out", [False, True], ids=["on", "opted out"])
@pytest.mark.parametrize(
    "value",
    [["/a", 3], [None], ("/a", b"/b"), 3, object()],
    ids=["a number", "None", "bytes", "no list", "an object"],
)
def test_a_list_option_with_a_non_string_is_refused_by_its_name(value, opt_out):
    # Stripped before any check, a number failed as an AttributeError naming
    # nothing, a None went missing, and once joined with the environment's
    # entries, the code's mistake was blamed on the variable.
    environ = {"REQTELEMETRY_EXCLUDE_PATHS": "/from-the-environment"}
    with pytest.raises(ValueError, match=r"^exclude_paths must be a list of strings"):
        Config.resolve(environ=environ, argv=[], opt_out=opt_out, exclude_paths=value)
    with pytest.raises(ValueError, match="allowed_query_keys must be a list of strings"):
        Telemetry(config=Config(allowed_query_keys=value, opt_out=opt_out))


@pytest.mark.parametrize("opt_out", [False, True], ids=["on", "opted out"])
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("timeout", 10**400),  # too large for a float: math.isfinite raised OverflowError
        ("flush_interval", 10**400),
        ("shutdown_timeout", 10**5000),  # too long even for repr() in the message
        ("retry_base_delay", 10**400),
        ("max_proof_of_work_bits", -5),  # every report failed, telemetry saying it was on
        ("max_proof_of_work_bits", 0),
        ("max_proof_of_work_bits", 10**6),
        ("max_attempts", -(10**5000)),  # a message without _shown() raised on its repr
        ("max_keys", -(10**5000)),
        ("max_payload_bytes", -(10**5000)),
        ("max_metrics", 10**5000),
    ],
    ids=lambda value: (
        value if isinstance(value, str) else str(value) if abs(value) < 10**9 else "huge"
    ),
)
def test_numbers_out_of_range_are_refused_by_their_name(option, value, opt_out):
    with pytest.raises(ValueError, match=f"^{option} must be"):
        Config.resolve(environ={}, argv=[], opt_out=opt_out, **{option: value})


def test_proof_of_work_bits_within_range_are_taken():
    for bits in (1, 24, 160):
        assert resolve(max_proof_of_work_bits=bits).max_proof_of_work_bits == bits


@pytest.mark.parametrize(
    "proxy",
    [
        "http://proxy:99999",  # a port out of range
        "http://",  # no host
        "http://a b:3128",  # a space in the host
        "http://u:p@proxy..bad:3128",  # an empty label
        "http://proxy:abc",  # httpx.InvalidURL, which is no ValueError
        "http://[::1",  # an unclosed bracket
        "ftp://proxy:21",
    ],
)
def test_a_proxy_httpx_cannot_use_is_refused_at_start_by_its_name(proxy):
    # Checked by its prefix only, these started telemetry, which then failed
    # at every flush (or raised a bare httpx.InvalidURL from Telemetry()).
    environ = {"REQTELEMETRY_PROXY": proxy}
    with pytest.raises(ValueError, match=r"^REQTELEMETRY_PROXY: proxy ") as refused:
        Config.resolve(environ=environ, argv=[], endpoint="http://collector.example")
    assert "u:p" not in str(refused.value)
    # Opted out, it is never used: no error.
    Config.resolve(environ={**environ, "DO_NOT_TRACK": "1"}, argv=[], endpoint="http://c.example")


def test_a_socks_proxy_without_socksio_is_refused_at_start(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "socksio" else real_find_spec(name, *args),
    )
    with pytest.raises(ValueError, match="socksio"):
        resolve(endpoint="http://collector.example", proxy="socks5://127.0.0.1:1080")
    assert resolve(endpoint="http://collector.example", proxy="http://proxy:3128").proxy


def test_urls_in_code_are_taken_without_surrounding_white_space():
    # As the variables' are: one read from a file ends in a newline.
    config = resolve(endpoint=" https://collector.example\n", proxy="\thttp://proxy:3128 ")
    assert config.endpoint == "https://collector.example"
    assert config.proxy == "http://proxy:3128"


def test_a_path_from_an_env_file_may_start_with_a_tilde(monkeypatch, tmp_path):
    """An env file or a systemd unit expands no "~": taken as it was, it made
    a directory named "~" in the working directory."""
    monkeypatch.setenv("HOME", str(tmp_path))
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    config = Config.resolve(
        environ={
            "REQTELEMETRY_DEPLOYMENT_ID_PATH": "~/state/deployment-id",
            "REQTELEMETRY_CA_BUNDLE": "~/ca.pem",
        },
        argv=[],
    )
    assert config.deployment_id_path == str(tmp_path / "state" / "deployment-id")
    assert config.ca_bundle == str(bundle)
    assert resolve(deployment_id_path="~/id").deployment_id_path == str(tmp_path / "id")


def test_resolve_still_takes_a_comma_separated_string():
    config = Config.resolve(environ={}, argv=[], allowed_path_segments="users, orders")
    assert config.allowed_path_segments == ("users", "orders")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://svc:secret@collector.example/v1?key=k#f", "https://collector.example/v1"),
        ("http://127.0.0.1:8099/", "http://127.0.0.1:8099/"),
        ("https://token@[::1]:443/t", "https://[::1]:443/t"),
        ("https://collector.example", "https://collector.example"),
        # A password with "/" as it is: urlsplit ends the host at it, and the
        # password's tail was shown as the path. An "@" in the path cannot be
        # told from that: nothing is shown.
        ("https://svc:Xy/SECRET@collector.example/v1", "https://***"),
        ("https://s/v:a@b/SECRET@collector.example:8443/", "https://***"),
        ("https://gw.example.org/u/@team/telemetry", "https://***"),
        # With "?" or "#" the rest is a query or a fragment, never shown.
        ("https://svc:Xy?SECRET@collector.example/v1", "https://svc"),
        ("https://svc:Xy#SECRET@collector.example/v1", "https://svc"),
        # An "@" in the query is the query's: shown without it, as any query.
        (
            "https://gw.example.org/telemetry?owner=ops@example.org&key=SECRET",
            "https://gw.example.org/telemetry",
        ),
    ],
)
def test_an_endpoint_is_shown_without_credentials(url, shown):
    assert redacted_url(url) == shown
    assert "SECRET" not in redacted_url(url)


def test_what_a_server_quotes_back_is_shown_without_the_urls_secrets():
    endpoint = (
        "https://telemetry:pass%2Fword@collector.example/v1"
        "?key=api-KEY-1&format=json&token=0123456789abcdef"
    )
    secrets = url_secrets(endpoint, "http://proxyuser:proxy-PW@proxy:3128")
    page = (
        "400 cannot serve POST /v1/v1/session?key=api-KEY-1&format=json&token=0123456789abcdef"
        " for telemetry:pass%2Fword, decoded pass/word; proxy-PW via proxyuser;"
        " key=api-KEY-1 again; unknown token 0123456789abcdef; invalid json body"
    )
    shown = scrubbed(page, secrets)
    for secret in ("api-KEY-1", "pass%2Fword", "pass/word", "proxy-PW", "0123456789abcdef"):
        assert secret not in shown
    # Words of the text are left alone: a short value, a user name.
    assert "invalid json body" in shown and "via proxyuser" in shown
    assert scrubbed(page, url_secrets("https://collector.example/v1", None)) == page


# -- found by the review of 2026-12-06 -------------------------------------------


@pytest.mark.parametrize("blank", ["", "   "])
@pytest.mark.parametrize("environ", [{}, {"SQA_OPT_OUT": "true"}, {"DO_NOT_TRACK": "1"}])
def test_a_blank_endpoint_from_code_means_no_endpoint(blank, environ):
    # endpoint=os.environ.get("APP_TELEMETRY_URL") with the variable set but empty.
    config = resolve(environ, endpoint=blank, proxy=blank, ca_bundle=blank)
    assert config.endpoint is None and config.proxy is None and config.ca_bundle is None
    assert config.opt_out == bool(environ)


@pytest.mark.parametrize(
    "options",
    [
        {"endpoint": "collector.example.org"},
        {"endpoint": "http://collector..example.org"},
        {"proxy": "proxy.internal:3128"},
        {"ca_bundle": "/nowhere/ca.pem"},
    ],
)
def test_opted_out_what_only_sending_uses_cannot_stop_the_app(options, monkeypatch):
    with pytest.raises(ValueError):
        resolve(**options)  # on: a clear error at start
    assert resolve({"DO_NOT_TRACK": "1"}, **options).opt_out
    assert resolve(opt_out=True, **options).opt_out
    monkeypatch.setenv("SQA_OPT_OUT", "true")
    assert not Telemetry(**options).enabled


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"record_query": "false"}, "record_query must be True or False"),
        ({"debug": "false"}, "debug must be True or False"),
        ({"group_unmatched": 0}, "group_unmatched must be True or False"),
        ({"opt_out": "true"}, "opt_out must be True or False"),
        ({"flush_interval": "60"}, "flush_interval must be a number"),
        ({"timeout": "5"}, "timeout must be a number"),
        ({"shutdown_timeout": None}, "shutdown_timeout must be a number"),
        ({"max_keys": "500"}, "max_keys must be a whole number"),
        ({"max_keys": 500.0}, "max_keys must be a whole number"),
        ({"max_attempts": True}, "max_attempts must be a whole number"),
        ({"endpoint": b"http://collector.example.org"}, "endpoint must be a string"),
    ],
)
@pytest.mark.parametrize("environ", [{}, {"SQA_OPT_OUT": "true"}])
def test_options_of_the_wrong_type_are_clear_errors_on_or_off(options, match, environ):
    # Settings read from the environment are strings: "false" is true to Python,
    # and would have recorded queries. A bug in code fails alike on and off.
    with pytest.raises(ValueError, match=match):
        resolve(environ, **options)
    with pytest.raises(ValueError, match=match):
        Config(**options).validate()


def test_whole_numbers_are_taken_where_seconds_are_expected():
    config = resolve(flush_interval=60, timeout=5, shutdown_timeout=0)
    assert (config.flush_interval, config.timeout, config.shutdown_timeout) == (60, 5, 0)


@pytest.mark.parametrize("name", ["app_name", "app_version", "app_git_hash", "app_build_time"])
@pytest.mark.parametrize("value", ["1.0\x00beta", "caf\udce9"])
def test_app_traits_the_collector_would_refuse_are_errors_at_start(name, value):
    # A NUL or a lone surrogate in a trait gets every report of the app refused.
    with pytest.raises(ValueError, match=f"{name} must be text without NUL"):
        resolve(**{name: value})


def test_a_hand_built_config_gets_the_environment_as_keyword_options_do(monkeypatch):
    monkeypatch.setenv("REQTELEMETRY_DEBUG", "1")
    monkeypatch.setenv("REQTELEMETRY_DISABLE", "memory_rss_bytes")
    monkeypatch.setenv("REQTELEMETRY_RECORD_QUERY", "false")
    monkeypatch.setenv("REQTELEMETRY_ALLOWED_QUERY_KEYS", "page")
    monkeypatch.setenv("REQTELEMETRY_EXCLUDE_PATHS", "/healthz")
    options = {
        "endpoint": "http://127.0.0.1:9",
        "record_query": True,
        "allowed_query_keys": ("page", "email"),
        "exclude_paths": ("/ready",),
    }
    made = [Telemetry(config=Config(**options)), Telemetry(**options)]
    for telemetry in made:
        telemetry.close()  # debug: its last report goes to the captured stderr, not at exit
    from_config, from_keywords = (telemetry.config for telemetry in made)
    for config in (from_config, from_keywords):
        assert config.debug is True
        assert config.disabled_traits == ("memory_rss_bytes",)
        assert config.record_query is False
        assert config.allowed_query_keys == ("page",)
        assert config.exclude_paths == ("/ready", "/healthz")
    assert from_config == from_keywords


def test_a_resolved_config_keeps_the_environment_it_was_resolved_against(monkeypatch):
    # Resolved against an environment of its caller's choosing (a test's): only
    # this process's opt-out still applies.
    monkeypatch.setenv("REQTELEMETRY_DEBUG", "1")
    config = resolve(endpoint="http://127.0.0.1:9")
    assert Telemetry(config=config).config.debug is False
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    assert not Telemetry(config=config).enabled


def test_applying_the_environment_twice_changes_nothing_more():
    environ = {
        "REQTELEMETRY_DISABLE": "cpu_count",
        "REQTELEMETRY_ALLOWED_PATH_SEGMENTS": "users",
        "REQTELEMETRY_EXCLUDE_PREFIXES": "/static/",
    }
    once = resolve(environ, allowed_path_segments=["users", "orders"], exclude_prefixes=["/a/"])
    assert once.with_environment(environ, []) == once


@pytest.mark.parametrize(
    ("options", "secret"),
    [
        ({"endpoint": "https://ops:SECRET2@collector..example.org/"}, "SECRET2"),
        ({"endpoint": "https://collector..example.org/?token=SECRET3"}, "SECRET3"),
        ({"endpoint": "https://ops:SECRET5@collector.example.org:99999/"}, "SECRET5"),
        ({"proxy": "htp://svc:SECRET4@proxy.internal:3128"}, "SECRET4"),
    ],
)
def test_start_up_errors_never_quote_credentials(options, secret):
    with pytest.raises(ValueError) as raised:
        resolve(**options)
    assert secret not in str(raised.value)


def test_an_endpoint_with_a_fragment_is_refused():
    with pytest.raises(ValueError, match="fragment"):
        resolve(endpoint="https://collector.example.org/telemetry#main")


def test_paths_may_be_given_as_path_objects(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    config = resolve(deployment_id_path=tmp_path / "id", ca_bundle=bundle)
    assert config.deployment_id_path == str(tmp_path / "id")
    assert config.ca_bundle == str(bundle)


@pytest.mark.parametrize(
    "endpoint", ["ftp://collector.example.org", "ws://collector.example.org", "gopher://x"]
)
def test_an_endpoint_that_is_not_http_is_refused_when_on(endpoint):
    with pytest.raises(ValueError, match="endpoint must be an http"):
        resolve(endpoint=endpoint)
    assert resolve({"DO_NOT_TRACK": "1"}, endpoint=endpoint).opt_out


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://ops:SECRET@[sso.example/login?token=SECRET", "https://[sso.example"),
        ("http://[::1/?key=SECRET", "http://[::1"),
    ],
)
def test_an_unparseable_url_is_still_shown_without_credentials(url, shown):
    assert redacted_url(url) == shown


def test_an_unparseable_endpoint_is_a_clear_error_naming_it():
    with pytest.raises(ValueError, match="endpoint is not a valid URL") as raised:
        resolve(endpoint="http://ops:SECRET@[::1/")
    assert "SECRET" not in str(raised.value)


def test_the_environment_sets_how_long_an_exit_waits_for_its_final_reports():
    """An operator whose workers are replaced often (gunicorn ``--max-requests``)
    can shorten, or with 0 skip, the wait a worker's exit makes for its final
    report, during which the server does not replace it."""
    assert (
        resolve({"REQTELEMETRY_SHUTDOWN_TIMEOUT": "0.5"}, shutdown_timeout=5).shutdown_timeout
        == 0.5
    )
    assert resolve({"REQTELEMETRY_SHUTDOWN_TIMEOUT": "0"}).shutdown_timeout == 0.0
    assert resolve({}, shutdown_timeout=5).shutdown_timeout == 5


@pytest.mark.parametrize("name", ["exclude_paths", "exclude_prefixes"])
def test_an_excluded_path_without_its_leading_slash_is_refused(name):
    """``exclude_paths=["healthz"]`` excluded nothing, silently: no request's path is that."""
    with pytest.raises(ValueError, match=rf"^{name} entries must start with '/', got 'healthz'"):
        resolve({}, **{name: ["/ok", "healthz"]})
    with pytest.raises(ValueError, match=rf"^REQTELEMETRY_{name.upper()}: {name} entries must"):
        resolve({f"REQTELEMETRY_{name.upper()}": "healthz"})


@pytest.mark.parametrize("content", ["", "not a certificate\n"])
def test_a_ca_bundle_without_a_certificate_is_an_error_naming_it(tmp_path, content):
    """Not an ``ssl.SSLError`` naming nothing, raised from building the HTTP client."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text(content)
    with pytest.raises(ValueError, match=r"^REQTELEMETRY_CA_BUNDLE: ca_bundle must be a PEM"):
        resolve({"REQTELEMETRY_CA_BUNDLE": str(bundle)}, endpoint="https://collector.example")
    with pytest.raises(ValueError, match=r"^ca_bundle must be a PEM"):
        Telemetry(endpoint="https://collector.example", send_in_tests=True, ca_bundle=bundle)
