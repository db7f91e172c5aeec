"""What every script shares: flag definitions, named scenarios, the worlds they describe, user errors."""
