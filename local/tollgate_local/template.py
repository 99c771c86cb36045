"""Read template.yaml: the only route table, schedule list and function list there is.

CloudFormation short-form tags (`!Ref`, `!GetAtt`, `!Sub`, ...) are read into their long form
(`{"Ref": ...}`, `{"Fn::GetAtt": [...]}`), so the template parses as CloudFormation sees it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

CFN_TAGS = (
    "Ref", "Condition", "GetAtt", "Sub", "Join", "Select", "Split", "If", "Equals", "Not", "And", "Or",
    "FindInMap", "Base64", "Cidr", "GetAZs", "ImportValue", "Transform",
)  # fmt: skip


class _CfnLoader(yaml.SafeLoader):
    pass


# YAML 1.1 reads yes/no/on/off as booleans (a schedule named `Off` would become False); CloudFormation
# keeps them strings. Only true/false are booleans here.
_CfnLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_CfnLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _make_constructor(tag: str) -> Any:
    key = tag if tag in {"Ref", "Condition"} else f"Fn::{tag}"

    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        value: Any
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            if tag == "GetAtt" and isinstance(value, str):
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        return {key: value}

    return construct


for _tag in CFN_TAGS:
    _CfnLoader.add_constructor(f"!{_tag}", _make_constructor(_tag))


def load_template(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=_CfnLoader)  # noqa: S506  (a SafeLoader subclass)
    if not isinstance(data, dict) or "Resources" not in data:
        raise ValueError(f"{path} is not a CloudFormation template")
    return data


def _logical_id(ref: Any) -> str | None:
    """The logical id behind `!GetAtt X.Arn`, `!Ref X` or `!Sub ${X.Arn}`."""
    if isinstance(ref, dict):
        if "Fn::GetAtt" in ref:
            return str(ref["Fn::GetAtt"][0])
        if "Ref" in ref:
            return str(ref["Ref"])
        if "Fn::Sub" in ref and isinstance(ref["Fn::Sub"], str):
            match = re.search(r"\$\{(\w+)(?:\.Arn)?\}", ref["Fn::Sub"])
            return match.group(1) if match else None
    return None


@dataclass(frozen=True)
class FunctionDef:
    logical_id: str
    code_uri: Path
    handler: str
    timeout: int
    memory_size: int
    environment: dict[str, Any]

    @property
    def module_path(self) -> Path:
        module = self.handler.rsplit(".", 1)[0]
        return self.code_uri / (module.replace(".", "/") + ".py")

    @property
    def handler_name(self) -> str:
        return self.handler.rsplit(".", 1)[1]


@dataclass(frozen=True)
class AuthorizerDef:
    name: str
    function_id: str
    identity_headers: tuple[str, ...]
    simple_responses: bool


@dataclass(frozen=True)
class RouteDef:
    function_id: str
    event_name: str
    method: str  # upper case, or ANY
    path: str
    authorizer: str | None
    pattern: re.Pattern[str] = field(compare=False)
    param_names: tuple[str, ...] = field(compare=False)

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def specificity(self) -> tuple[int, int, int]:
        segments = [s for s in self.path.split("/") if s]
        static = sum(1 for s in segments if not s.startswith("{"))
        greedy = 1 if self.path.endswith("+}") else 0
        return (-greedy, static, len(segments))

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.fullmatch(path)
        return None if found is None else found.groupdict()


@dataclass(frozen=True)
class ScheduleDef:
    name: str
    function_id: str
    expression: str
    input: str | None
    enabled: bool
    timezone: str


def _route_pattern(path: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    names: list[str] = []
    parts: list[str] = []
    for segment in path.strip("/").split("/"):
        greedy = re.fullmatch(r"\{(\w+)\+\}", segment)
        param = re.fullmatch(r"\{(\w+)\}", segment)
        if greedy:
            names.append(greedy.group(1))
            parts.append(f"(?P<{greedy.group(1)}>.+)")
        elif param:
            names.append(param.group(1))
            parts.append(f"(?P<{param.group(1)}>[^/]+)")
        else:
            parts.append(re.escape(segment))
    return re.compile("/" + "/".join(parts)), tuple(names)


class Template:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = path.parent
        self.data = load_template(path)

    @cached_property
    def resources(self) -> dict[str, dict[str, Any]]:
        return dict(self.data.get("Resources") or {})

    @cached_property
    def _function_globals(self) -> dict[str, Any]:
        return dict((self.data.get("Globals") or {}).get("Function") or {})

    @cached_property
    def functions(self) -> dict[str, FunctionDef]:
        out: dict[str, FunctionDef] = {}
        glob = self._function_globals
        for logical_id, res in self.resources.items():
            if res.get("Type") != "AWS::Serverless::Function":
                continue
            props = res.get("Properties") or {}
            env = dict((glob.get("Environment") or {}).get("Variables") or {})
            env.update((props.get("Environment") or {}).get("Variables") or {})
            out[logical_id] = FunctionDef(
                logical_id=logical_id,
                code_uri=(self.root / str(props.get("CodeUri", glob.get("CodeUri", ".")))).resolve(),
                handler=str(props.get("Handler", glob.get("Handler", "app.lambda_handler"))),
                timeout=int(props.get("Timeout", glob.get("Timeout", 3))),
                memory_size=int(props.get("MemorySize", glob.get("MemorySize", 128))),
                environment=env,
            )
        return out

    def _http_api_auth(self) -> tuple[dict[str, AuthorizerDef], str | None]:
        authorizers: dict[str, AuthorizerDef] = {}
        default: str | None = None
        for res in self.resources.values():
            if res.get("Type") != "AWS::Serverless::HttpApi":
                continue
            auth = (res.get("Properties") or {}).get("Auth") or {}
            default = auth.get("DefaultAuthorizer") or default
            for name, spec in (auth.get("Authorizers") or {}).items():
                function_id = _logical_id(spec.get("FunctionArn"))
                if function_id is None:
                    continue  # a JWT authorizer or another kind the gateway does not run
                identity = spec.get("Identity") or {}
                authorizers[name] = AuthorizerDef(
                    name=name,
                    function_id=function_id,
                    identity_headers=tuple(h.lower() for h in identity.get("Headers") or ()),
                    simple_responses=bool(spec.get("EnableSimpleResponses", False)),
                )
        return authorizers, default

    @cached_property
    def authorizers(self) -> dict[str, AuthorizerDef]:
        return self._http_api_auth()[0]

    @cached_property
    def routes(self) -> list[RouteDef]:
        _, default = self._http_api_auth()
        routes: list[RouteDef] = []
        for function_id in self.functions:
            props = self.resources[function_id].get("Properties") or {}
            for event_name, ev in (props.get("Events") or {}).items():
                if ev.get("Type") != "HttpApi":
                    continue
                ev_props = ev.get("Properties") or {}
                path = str(ev_props.get("Path", "/{proxy+}"))
                method = str(ev_props.get("Method", "ANY")).upper()
                if method == "X-AMAZON-APIGATEWAY-ANY-METHOD":
                    method = "ANY"
                authorizer = (ev_props.get("Auth") or {}).get("Authorizer", default)
                if authorizer == "NONE":
                    authorizer = None
                pattern, names = _route_pattern(path)
                routes.append(RouteDef(function_id, event_name, method, path, authorizer, pattern, names))
        routes.sort(key=lambda r: r.specificity, reverse=True)
        return routes

    @cached_property
    def schedules(self) -> dict[str, ScheduleDef]:
        out: dict[str, ScheduleDef] = {}
        for function_id in self.functions:
            props = self.resources[function_id].get("Properties") or {}
            for event_name, ev in (props.get("Events") or {}).items():
                if ev.get("Type") not in {"Schedule", "ScheduleV2"}:
                    continue
                ev_props = ev.get("Properties") or {}
                state = ev_props.get("State")
                enabled = bool(ev_props.get("Enabled", True)) and state != "DISABLED"
                out[event_name] = ScheduleDef(
                    name=event_name,
                    function_id=function_id,
                    expression=str(ev_props.get("ScheduleExpression") or ev_props.get("Schedule")),
                    input=ev_props.get("Input"),
                    enabled=enabled,
                    timezone=str(ev_props.get("ScheduleExpressionTimezone", "UTC")),
                )
        return out
