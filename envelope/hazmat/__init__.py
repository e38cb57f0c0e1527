"""Hazardous materials: the format v1 building blocks (header codec, key schedule, segments).

Use `envelope.encrypt` / `envelope.decrypt` and friends instead unless you are implementing a
new reader or writer of the format. Everything here follows docs/format.md section by section.
"""
