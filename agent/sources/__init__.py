"""Where events enter the agent: the SDK socket now; hardware and access sources later."""
