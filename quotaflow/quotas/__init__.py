"""What a model may use: limits, tier tables and their schema, the quota book (tables, overrides,
learned figures, headroom), shares and prices."""
