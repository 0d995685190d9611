"""A small RAG application for scripts/phoenix-demo: it retrieves a passage, asks the LLM (the
openai client, through Envoy) and traces both with the OpenTelemetry SDK into Phoenix. Its
`traceparent` rides on the LLM request, so the span the TruthTable collector exports for that
exchange is a child of the application's span: one trace shows what the application did and
what the model was told and answered.

usage: phoenix-demo-app.py LLM_BASE_URL PHOENIX_URL PROJECT
"""

import json
import sys

import openai
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

llm_url, phoenix_url, project = sys.argv[1:4]
provider = TracerProvider(
    resource=Resource.create(
        {"service.name": "rag-app", "openinference.project.name": project}
    )
)
provider.add_span_processor(
    SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{phoenix_url}/v1/traces"))
)
tracer = provider.get_tracer("rag-app")
client = openai.OpenAI(base_url=llm_url, api_key="sk-demo-never-stored")

PASSAGES = {
    "Who built Envoy?": ("Envoy FAQ", "Envoy is an L7 proxy and communication bus, originally built at Lyft."),
    "What is the capital of France?": ("Atlas", "Paris is the capital of France and its largest city."),
}

for question, (title, text) in PASSAGES.items():
    with tracer.start_as_current_span("answer_question") as root:
        root.set_attribute("openinference.span.kind", "CHAIN")
        root.set_attribute("input.value", question)
        with tracer.start_as_current_span("retrieve") as retrieve:
            retrieve.set_attribute("openinference.span.kind", "RETRIEVER")
            retrieve.set_attribute("input.value", question)
            retrieve.set_attribute("retrieval.documents.0.document.id", title)
            retrieve.set_attribute("retrieval.documents.0.document.content", text)
        headers = {}
        propagate.inject(headers)  # traceparent: this span is the LLM call's parent
        stream = client.chat.completions.create(
            model="demo-rag-1",
            stream=True,
            stream_options={"include_usage": True},
            messages=[
                {"role": "system", "content": "Answer only from the retrieved passages."},
                {"role": "user", "content": question},
            ],
            extra_body={"documents": [{"title": title, "text": text}]},
            extra_headers=headers,
        )
        answer = "".join(
            c.choices[0].delta.content or "" for c in stream if c.choices
        )
        root.set_attribute("output.value", answer)
        print(json.dumps({"question": question, "answer": answer}))
provider.shutdown()
