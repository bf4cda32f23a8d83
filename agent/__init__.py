"""traintrail node agent (`traintrail-agent`) and training SDK (`agent.sdk`).

Deliberately empty: training processes import `agent.sdk`, and importing the
package must not pull in the daemon's dependencies.
"""
