"""THI: test-time human-centered interaction, as a LangGraph state machine.

retrieve -> inspect -> ask -> rewrite -> re_retrieve -> converge -> (inspect | END)

A run follows one policy, each in its own module behind one interface (:mod:`.policy`):

* :mod:`.paper`: ICL's algorithm (walk the original top-5 one per round, yes/no verification,
  the xi gate, the fixed questionnaire on the accepted anchor, fusion with lambda, refine once);
* :mod:`.adaptive`: ours without a user (sequential anchor search down the current ranking,
  questions where the top candidates disagree, verified candidates moved, a stop when the ranking
  is stable);
* :mod:`.with_user`: ours with a user who knows the target (many candidates checked against the
  facts the user gives, round after round).

:mod:`.graph` wires the nodes; :mod:`.cli` is ``python -m graphs.thi``. The run context is a
:class:`graphs.config.THIContext` of plain values; ``graphs.server`` resolves it to the models,
gallery and MLLM (cached per process). ``graph`` is the compiled graph ("thi") a LangGraph server
serves.

>>> from graphs.config import THIContext
>>> result = run("a woman in a red coat", THIContext(policy="paper"))   # doctest: +SKIP
>>> result["ranking"][:3], result["stopped_because"]                     # doctest: +SKIP
"""

from .graph import (DEADLINE_SPENT, build_graph, final_scores, policy_for, recursion_limit, round_summary, run,
                    served_graph)
from .policy import (CONVERGED, GATE_CLOSED, NO_ANCHOR, NOTHING_NEW, REFINED_ONCE, ROUND_LIMIT, USER_FINISHED,
                     Policy)

#: The compiled THI graph as a LangGraph server serves it (``langgraph.json``): named "thi", no
#: checkpointer (the server brings its own), input ``{"query"}``, output and streams the public
#: values (:class:`graphs.state.THIOutput`), context :class:`graphs.config.THIContext`.
graph = served_graph()

__all__ = ["CONVERGED", "DEADLINE_SPENT", "GATE_CLOSED", "NO_ANCHOR", "NOTHING_NEW", "REFINED_ONCE", "ROUND_LIMIT", "USER_FINISHED",
           "Policy", "build_graph", "final_scores", "graph", "policy_for", "recursion_limit", "round_summary", "run",
           "served_graph"]
