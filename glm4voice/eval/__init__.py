"""Evaluation harness (``glm4voice eval``): independent judges, metrics, data sets, suites and the report.

judge.py (ASR judges, VAD) · metrics.py (normalisation, WER/CER, answer matching) · data.py (evaluation sets) ·
system.py (the model under test and its replies) · context.py · suites.py · llm_judge.py · report.py.
"""
