"""Who goes when: bucket arithmetic, the line of a scope and its rules, the fast lane, the
acquire flow both limiters run, and the waiting primitives."""
