"""Real peers (servers, simulators) that integration tests run against."""
