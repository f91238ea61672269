"""Usage, cost, budgets and rate limits per principal.

pricing      prices per million tokens by "provider/model"; token estimates
usage        what each principal used of each model, in this process (and the log)
budgets      spend per period, reserved before a request and settled after
rate_limit   requests and tokens per minute: token buckets
store        where budgets and buckets live: memory ...
redis_store  ... or Redis, shared by every replica (memory while it is down)
hook         `Limits`: what the core calls around each request
"""

from llmservice.service.limits.hook import Limits, Ticket
from llmservice.service.limits.usage import UsageKey, UsageLedger, UsageTotals

__all__ = ["Limits", "Ticket", "UsageKey", "UsageLedger", "UsageTotals"]
