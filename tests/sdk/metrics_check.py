"""Parses a Prometheus text exposition (stdin) with the reference parser and prints the samples
as JSON: [[name, labels, value], ...]. Fails loudly when the text does not parse."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
print(json.dumps(samples))
