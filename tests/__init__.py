"""The test harnesses beside the specification (test_channel.py), and what they share."""
