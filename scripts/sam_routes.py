"""Lists the HTTP routes `sam local start-api` would serve for template.yaml, with SAM
CLI's own provider classes (no Docker, no network), and checks them.

Run with the virtual environment's Python (scripts/setup.sh installs aws-sam-cli):

    .venv/bin/python scripts/sam_routes.py [TEMPLATE]

Why this holds: SAM CLI collects routes with ONE provider for all stacks,
`ApiProvider.find_api_provider`: the first resource of an API type it meets, root
stack first, decides. A SAM type (AWS::Serverless::Function/Api/HttpApi) picks
`SamApiProvider`, which reads Serverless functions' Api/HttpApi events and
Serverless::Api/HttpApi resources only. A CloudFormation type (AWS::ApiGateway::*,
AWS::ApiGatewayV2::*) picks `CfnApiProvider`, which reads every AWS::ApiGatewayV2::Route
as an HTTP route and fails on `$connect` ("METHOD PATH" expected). So template.yaml keeps
the WebSocket API in nested stacks (websocket-api.yaml, websocket-routes.yaml): SAM loads
them (`SamLocalStackProvider.get_stacks` descends into local nested stacks) but, with the
SAM provider chosen, never reads their routes.

Prints what it found, one line each, and exits non-zero when a check fails. The last
line is a summary.
"""

from __future__ import annotations

import copy
import logging
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TEMPLATE = os.path.join(HERE, "..", "template.yaml")

# What the webhook function must serve, and nothing else.
WEBHOOK_FUNCTION = "WebhookFunction"
ANY = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
EXPECTED = {
    (("POST",), "/webhook/message", WEBHOOK_FUNCTION),
    (("GET",), "/health", WEBHOOK_FUNCTION),
    (ANY, "$default", WEBHOOK_FUNCTION),
}
WEBSOCKET_ROUTE_KEYS = {"$connect", "$disconnect", "$default"}


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    try:
        from samcli.lib.providers.api_provider import ApiProvider
        from samcli.lib.providers.cfn_api_provider import CfnApiProvider
        from samcli.lib.providers.sam_api_provider import SamApiProvider
        from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider
        from samcli import __version__ as sam_version
    except ImportError as err:
        print(f"FAIL cannot import SAM CLI ({err}): run scripts/setup.sh and use .venv/bin/python")
        return 1

    template = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_TEMPLATE)
    problems: list[str] = []

    def check(ok: bool, line: str) -> None:
        print(("ok   " if ok else "FAIL ") + line)
        if not ok:
            problems.append(line)

    print(f"SAM CLI {sam_version}, template {os.path.relpath(template)}")

    # 1. The stacks, as `sam local` loads them.
    stacks, remote = SamLocalStackProvider.get_stacks(template)
    root = stacks[0]
    children = stacks[1:]
    names = ", ".join(s.stack_path for s in children) or "none"
    check(not remote, f"stacks: root + nested {names}" + (f"; remote, not loaded: {remote}" if remote else ""))

    # 2. The WebSocket routes are in what SAM loaded, in nested stacks only.
    ws_keys = {}
    for stack in stacks:
        for logical_id, resource in stack.resources.items():
            if resource.get("Type") == "AWS::ApiGatewayV2::Route":
                key = resource.get("Properties", {}).get("RouteKey")
                ws_keys[key] = stack.stack_path or "<root>"
    in_root = sorted(k for k, where in ws_keys.items() if where == "<root>")
    check(
        WEBSOCKET_ROUTE_KEYS <= set(ws_keys) and not in_root,
        "WebSocket routes loaded from nested stacks: "
        + ", ".join(f"{k} ({ws_keys[k]})" for k in sorted(ws_keys))
        + (f"; in the root stack: {in_root}" if in_root else ""),
    )

    # 3. The invariant: no CloudFormation API-type resource in the root stack, so the SAM
    #    provider is chosen whatever the order of resources.
    cfn_in_root = sorted(
        logical_id
        for logical_id, resource in root.resources.items()
        if resource.get("Type") in CfnApiProvider.TYPES
    )
    check(not cfn_in_root, "root stack has no AWS::ApiGateway*/ApiGatewayV2 resource"
          + (f": found {cfn_in_root}" if cfn_in_root else ""))
    provider = ApiProvider.find_api_provider(stacks)
    check(isinstance(provider, SamApiProvider), f"provider chosen: {type(provider).__name__}")

    # 4. The routes `sam local start-api` would serve.
    try:
        routes = ApiProvider(stacks, cwd=os.path.dirname(template)).api.routes
    except Exception as err:  # what start-api would die of
        check(False, f"route discovery failed: {type(err).__name__}: {err}")
        routes = []
    found = set()
    for route in sorted(routes, key=lambda r: (r.path, sorted(r.methods))):
        methods = tuple(sorted(route.methods))
        if route.path == "$default":
            # The catch-all, whatever methods it lists (an HttpApi event without Path and
            # Method gives X-AMAZON-APIGATEWAY-ANY-METHOD): start-api serves it for every
            # method on every path no other route takes.
            methods = ANY
        found.add((methods, route.path, route.function_name))
        shown = "ANY" if methods == ANY else ",".join(methods)
        print(f"     route {shown} {route.path} -> {route.function_name} ({route.event_type})")
    check(found == EXPECTED, "routes are exactly POST /webhook/message, GET /health, ANY $default -> "
          + WEBHOOK_FUNCTION
          + ("" if found == EXPECTED else f"; missing {sorted(EXPECTED - found)}, extra {sorted(found - EXPECTED)}"))
    leaked = sorted({r.path for r in routes} & (WEBSOCKET_ROUTE_KEYS - {"$default"}))
    check(not leaked, "no WebSocket route key served as HTTP" + (f": {leaked}" if leaked else ""))

    # 5. Requests through start-api's own Flask app (LocalApigwService), with a stand-in
    #    for the Docker-backed Lambda runner that records which function each request
    #    reached and with which route key. Flask's test client: no socket is opened.
    if routes:
        for line, ok in requests_through_start_api(routes):
            check(ok, line)

    # 6. Control: the same resources flattened into one stack, WebSocket first, make SAM
    #    choose CfnApiProvider, which cannot read `$connect`. Shows what the nesting avoids;
    #    informational only (a SAM CLI that copes would be no failure of ours).
    print("     control: " + control(template, stacks, ApiProvider, SamLocalStackProvider))

    if problems:
        print(f"sam local routes: {len(problems)} check(s) failed")
        return 1
    print("sam local routes: POST /webhook/message, GET /health, ANY $default -> WebhookFunction;"
          f" WebSocket routes ({', '.join(sorted(WEBSOCKET_ROUTE_KEYS))}) stay in nested stacks, unread")
    return 0


# (method, path, route key the function must see); all must reach WEBHOOK_FUNCTION.
REQUESTS = [
    ("POST", "/webhook/message", "POST /webhook/message"),
    ("GET", "/health", "GET /health"),
    ("GET", "/webhook/message", "$default"),  # our 405
    ("DELETE", "/health", "$default"),  # our 405
    ("GET", "/", "$default"),  # our 404
    ("POST", "/no/such/path", "$default"),  # our 404
]


def requests_through_start_api(routes):
    import json

    from samcli.local.apigw.local_apigw_service import LocalApigwService
    from samcli.lib.providers.provider import Api

    calls = []

    class StubRunner:
        """What LocalApigwService needs of LocalLambdaRunner, without Docker."""

        def is_debugging(self):
            return False

        def invoke(self, function_name, event, stdout=None, stderr=None, **_):
            route_key = json.loads(event).get("routeKey")
            calls.append((function_name, route_key))
            body = json.dumps({"function": function_name, "routeKey": route_key})
            stdout.write_str(json.dumps({"statusCode": 200, "body": body}))

    api = Api(routes=routes)
    service = LocalApigwService(api=api, lambda_runner=StubRunner(), port=0, host="127.0.0.1")
    service.create()
    client = service._app.test_client()
    for method, path, want_key in REQUESTS:
        calls.clear()
        response = client.open(path, method=method, data=b"{}", content_type="application/json")
        got = calls[0] if calls else (None, None)
        ok = response.status_code == 200 and got == (WEBHOOK_FUNCTION, want_key)
        yield (f"start-api {method} {path} -> {got[0]} as {got[1]!r}"
               + ("" if ok else f" (HTTP {response.status_code}; want {WEBHOOK_FUNCTION} as {want_key!r})"), ok)


def control(template, stacks, ApiProvider, SamLocalStackProvider) -> str:
    """Discovery over one flattened template with the nested resources first."""
    from samcli.commands._utils.template import get_template_data

    root = get_template_data(template)
    flat = copy.deepcopy(root)
    resources = {}
    for child in stacks[1:]:
        data = get_template_data(child.location)
        for name, param in data.get("Parameters", {}).items():
            flat.setdefault("Parameters", {})[name] = {"Type": "String", "Default": name}
        resources.update(copy.deepcopy(data.get("Resources", {})))
    for name, resource in root.get("Resources", {}).items():
        if resource.get("Type") not in ("AWS::Serverless::Application", "AWS::CloudFormation::Stack"):
            resources[name] = resource
    flat["Resources"] = resources
    flat.pop("Outputs", None)
    saved = os.getcwd()
    os.chdir(os.path.dirname(template))
    try:
        flat_stacks, _ = SamLocalStackProvider.get_stacks(template_dictionary=flat)
        chosen = type(ApiProvider.find_api_provider(flat_stacks)).__name__
        try:
            n = len(ApiProvider(flat_stacks).api.routes)
            return f"flattened, WebSocket resources first: {chosen} found {n} routes (this SAM CLI copes)"
        except Exception as err:
            return f"flattened, WebSocket resources first: {chosen} fails: {type(err).__name__}: {err}"
    except Exception as err:
        return f"could not build the flattened template: {type(err).__name__}: {err}"
    finally:
        os.chdir(saved)


if __name__ == "__main__":
    sys.exit(main())
