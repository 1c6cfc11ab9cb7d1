"""Wire details the SDKs do not reach: raw streams, paging, countTokens forms, batch files."""

from __future__ import annotations

import json

import httpx
from emulator_helpers import gen_body

from quotaflow.emulator import ServedEmulator

PRO = "/v1beta/models/gemini-2.5-pro"


def test_stream_without_alt_is_one_json_array(http: httpx.Client) -> None:
    response = http.post(f"{PRO}:streamGenerateContent", json=gen_body("array"))
    assert response.headers["content-type"].startswith("application/json")
    chunks = json.loads(response.text)
    assert len(chunks) == 3
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == 24
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert "finishReason" not in chunks[0]["candidates"][0]


def test_stream_with_alt_sse(http: httpx.Client) -> None:
    response = http.post(f"{PRO}:streamGenerateContent", params={"alt": "sse"}, json=gen_body())
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\r\n\r\n") if e]
    assert all(e.startswith("data: ") for e in events)
    usage = [json.loads(e[6:])["usageMetadata"] for e in events]
    assert [u["promptTokenCount"] for u in usage] == [2, 2, 2]
    assert [u["candidatesTokenCount"] for u in usage] == [8, 16, 24]
    assert usage[-1]["totalTokenCount"] == 26


def test_count_tokens_with_generate_content_request(http: httpx.Client) -> None:
    request = {
        **gen_body("what is the weather"),
        "systemInstruction": {"parts": [{"text": "You are a weather bot."}]},
        "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "now"}]}],
    }
    generated = http.post(f"{PRO}:generateContent", json=request).json()
    counted = http.post(
        f"{PRO}:countTokens",
        json={"generateContentRequest": {"model": "models/gemini-2.5-pro", **request}},
    ).json()
    only_contents = http.post(f"{PRO}:countTokens", json={"contents": request["contents"]}).json()
    assert counted["totalTokens"] == generated["usageMetadata"]["promptTokenCount"]
    assert only_contents["totalTokens"] == 5
    assert counted["totalTokens"] > only_contents["totalTokens"] + 6
    assert http.post(f"{PRO}:countTokens", json={}).status_code == 400


def test_models_paging(http: httpx.Client) -> None:
    first = http.get("/v1/models", params={"pageSize": 2}).json()
    assert [m["name"] for m in first["models"]] == [
        "models/gemini-2.5-flash",
        "models/gemini-2.5-pro",
    ]
    second = http.get("/v1/models", params={"pageSize": 2, "pageToken": first["nextPageToken"]})
    assert [m["name"] for m in second.json()["models"]] == ["models/gemini-embedding-001"]
    assert "nextPageToken" not in second.json()
    assert http.get("/v1/models", params={"pageToken": "zzz"}).status_code == 400
    model = http.get("/v1beta/models/gemini-embedding-001").json()
    assert model["supportedGenerationMethods"] == [
        "embedContent",
        "countTextTokens",
        "countTokens",
        "asyncBatchEmbedContent",
    ]


def test_file_batch_and_download(http: httpx.Client) -> None:
    lines = [{"key": f"k{i}", "request": gen_body(f"line {i}")} for i in range(3)]
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    start = http.post(
        "/upload/v1beta/files",
        json={"file": {"mimeType": "application/jsonl"}},
        headers={
            "x-goog-upload-protocol": "resumable",
            "x-goog-upload-command": "start",
            "x-goog-upload-header-content-length": str(len(data)),
            "x-goog-upload-header-content-type": "application/jsonl",
        },
    )
    url = start.headers["x-goog-upload-url"]
    part = httpx.post(
        url,
        content=data[:10],
        headers={"x-goog-upload-command": "upload", "x-goog-upload-offset": "0"},
    )
    assert part.headers["x-goog-upload-status"] == "active"
    wrong = httpx.post(
        url,
        content=data[10:],
        headers={"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "5"},
    )
    assert wrong.status_code == 400
    done = httpx.post(
        url,
        content=data[10:],
        headers={"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "10"},
    )
    name = done.json()["file"]["name"]
    job = http.post(
        f"{PRO}:batchGenerateContent",
        json={"batch": {"displayName": "file job", "inputConfig": {"fileName": name}}},
    ).json()
    got = http.get(f"/v1beta/{job['name']}").json()
    assert got["done"] is True
    output = got["metadata"]["output"]["responsesFile"]
    results = http.get(f"/v1beta/{output}:download", params={"alt": "media"}).text.splitlines()
    assert [json.loads(r)["key"] for r in results] == ["k0", "k1", "k2"]
    first = json.loads(results[0])["response"]["candidates"][0]["content"]["parts"][0]["text"]
    assert first.startswith("Echo: line 0")


def test_async_batch_embed(http: httpx.Client) -> None:
    request = {"content": {"parts": [{"text": "embed me"}]}, "outputDimensionality": 3}
    body = {
        "batch": {
            "inputConfig": {"requests": {"requests": [{"request": request, "metadata": {"i": 1}}]}}
        }
    }
    job = http.post("/v1beta/models/gemini-embedding-001:asyncBatchEmbedContent", json=body)
    inlined = job.json()["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
    assert len(inlined[0]["response"]["embedding"]["values"]) == 3
    assert inlined[0]["metadata"] == {"i": 1}


def test_tuned_model_routes(http: httpx.Client) -> None:
    op = http.post(
        "/v1beta/tunedModels",
        params={"tunedModelId": "my-model"},
        json={"baseModel": "models/gemini-2.5-pro", "displayName": "mine"},
    ).json()
    assert op["name"].startswith("tunedModels/my-model/operations/")
    assert op["metadata"]["tunedModel"] == "tunedModels/my-model"
    listed = http.get("/v1beta/tunedModels").json()["tunedModels"]
    assert [(t["name"], t["state"]) for t in listed] == [("tunedModels/my-model", "ACTIVE")]
    streamed = http.post(
        "/v1beta/tunedModels/my-model:streamGenerateContent", params={"alt": "sse"}, json=gen_body()
    )
    assert streamed.status_code == 200
    assert http.delete("/v1beta/tunedModels/my-model").json() == {}
    assert http.get("/v1beta/tunedModels/my-model").status_code == 404
    dup = {"baseModel": "models/nope"}
    assert http.post("/v1beta/tunedModels", json=dup).status_code == 404


def test_stats_split_per_project(http: httpx.Client, served: ServedEmulator) -> None:
    http.post(f"{PRO}:generateContent", json=gen_body("abcd"))
    http.post(
        f"{PRO}:generateContent", json=gen_body("abcdabcd"), headers={"x-goog-api-key": "other-key"}
    )
    pro = served.emulator.stats(include_log=True)["models"]["gemini-2.5-pro"]
    assert pro["max_input_tokens_in_window"] == 3
    assert pro["projects"] == {
        "proj-a": {"max_requests_in_window": 1, "max_input_tokens_in_window": 1},
        "proj-b": {"max_requests_in_window": 1, "max_input_tokens_in_window": 2},
    }
    assert [e["project"] for e in pro["log"]] == ["proj-a", "proj-b"]


def test_idle_connections_outlive_the_clients_own_expiry(
    served: ServedEmulator, http: httpx.Client
) -> None:
    """The client must close an idle connection first: a server that closes it at the same
    moment (uvicorn's default is httpx's 5 s) races a request reusing it into a ReadError."""
    server_idle = served._server.config.timeout_keep_alive
    client_idle = httpx.Limits(max_connections=None).keepalive_expiry
    assert client_idle is not None and server_idle > 2 * client_idle
    first = http.post(f"{PRO}:countTokens", json=gen_body("a"))
    second = http.post(f"{PRO}:countTokens", json=gen_body("b"))  # on the same connection
    assert first.status_code == second.status_code == 200
    assert first.extensions["network_stream"] is second.extensions["network_stream"]
