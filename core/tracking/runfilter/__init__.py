"""The run filter language of ``runs list --where`` and ``--sort`` (docs/runs.md).

``params.lr > 0.01 and (metrics.val_loss.min < 0.3 or tags.model = 'resnet')``

A hand-written tokenizer and recursive-descent parser turn the text into a
small tree (:class:`Compare`, :class:`And`, :class:`Or`, :class:`Not`);
:mod:`mlfleet.core.tracking.run_queries` compiles that tree into SQL. Nothing
the user typed is ever pasted into SQL: keys and values become bound
parameters, and column names, operators and summaries come from the fixed
tables below. A filter that does not parse fails with one sentence that
names the column where it went wrong.

:func:`parse_relation` reads the same fields with arithmetic and a scope
(``champion.``) on the right: a pipeline gate's requirement (relation.py).
"""

from mlfleet.core.tracking.runfilter.parse import parse_filter, parse_sort
from mlfleet.core.tracking.runfilter.relation import parse_relation
from mlfleet.core.tracking.runfilter.tree import (COMPARISONS, MAX_DEPTH, MAX_FIELDS, MAX_LENGTH, METRIC_SUMMARIES, RUN_COLUMNS,
                                         And, Arith, Compare, Field, FilterError, Node, Not, Number, Operand, Or, Relation,
                                         SortKey, Term, Value, fields_of, show_term)

__all__ = ["FilterError", "Field", "Compare", "And", "Or", "Not", "Node", "SortKey", "Value", "parse_filter",
           "parse_sort", "fields_of", "RUN_COLUMNS", "METRIC_SUMMARIES", "COMPARISONS", "MAX_LENGTH", "MAX_DEPTH",
           "MAX_FIELDS", "parse_relation", "Relation", "Term", "Arith", "Number", "Operand", "show_term"]
