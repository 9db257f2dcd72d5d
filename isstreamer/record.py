"""``@record``: the part of ``@dataclass`` this package uses, without its start-up cost.

``dataclasses`` imports ``inspect`` (and with it ``ast``, ``dis``, ``tokenize``) and compiles the
methods of every class it decorates: about 25 ms of a producer's ``import`` for the handful of
option and settings classes, more than the rest of the package. A record's fields are its class
annotations, in order, with the class attribute as default (:class:`factory` for a fresh
mutable one); its methods are generic (``__init__`` by position or keyword, ``__repr__``,
``__eq__``, ``__hash__`` when frozen) and ``__post_init__`` runs as a dataclass's does.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Tuple

_MISSING = object()


class factory:
    """A default made anew for each instance (``dataclasses.field(default_factory=...)``)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def fields(obj: Any) -> Tuple[str, ...]:
    """The field names of a record class or instance, in order."""
    return obj.__record_fields__


def asdict(obj: Any) -> Dict[str, Any]:
    """A record's fields by name (a new dict; the values themselves are not copied)."""
    return {name: getattr(obj, name) for name in obj.__record_fields__}


def record(*, frozen: bool = False, hidden: Iterable[str] = ()) -> Callable[[type], type]:
    """Make a class a record (``frozen``: assignment raises; ``hidden``: left out of the repr)."""
    hide = frozenset(hidden)

    def wrap(cls: type) -> type:
        names = tuple(cls.__dict__.get("__annotations__", {}))
        defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
        required = [n for n in names if n not in defaults]
        if required and names.index(required[-1]) > min((names.index(n) for n in defaults), default=len(names)):
            raise TypeError("%s: a field without a default follows one with a default" % cls.__name__)
        post_init = getattr(cls, "__post_init__", None)

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            if len(args) > len(names):
                raise TypeError("%s() takes %d positional arguments, %d given" % (cls.__name__, len(names), len(args)))
            values = dict(zip(names, args))
            for k, v in kwargs.items():
                if k not in defaults and k not in required:
                    raise TypeError("%s() got an unexpected keyword argument %r" % (cls.__name__, k))
                if k in values:
                    raise TypeError("%s() got multiple values for argument %r" % (cls.__name__, k))
                values[k] = v
            for n in names:
                if n not in values:
                    if n not in defaults:
                        raise TypeError("%s() missing required argument %r" % (cls.__name__, n))
                    d = defaults[n]
                    values[n] = d.make() if isinstance(d, factory) else d
                object.__setattr__(self, n, values[n])
            if post_init is not None:
                post_init(self)

        def __repr__(self: Any) -> str:
            shown = ", ".join("%s=%r" % (n, getattr(self, n)) for n in names if n not in hide)
            return "%s(%s)" % (type(self).__qualname__, shown)

        def __eq__(self: Any, other: Any) -> Any:
            if other.__class__ is not self.__class__:
                return NotImplemented
            return all(getattr(self, n) == getattr(other, n) for n in names)

        for n, d in defaults.items():  # instances hold their own values (a factory is no value)
            if isinstance(d, factory):
                delattr(cls, n)
        cls.__record_fields__ = names  # type: ignore[attr-defined]
        cls.__init__ = __init__  # type: ignore[misc]
        if "__repr__" not in cls.__dict__:
            cls.__repr__ = __repr__  # type: ignore[method-assign]
        cls.__eq__ = __eq__  # type: ignore[method-assign]
        if frozen:

            def __setattr__(self: Any, name: str, value: Any) -> None:  # noqa: ARG001
                raise AttributeError("cannot assign to field %r of a frozen %s" % (name, cls.__name__))

            def __delattr__(self: Any, name: str) -> None:
                raise AttributeError("cannot delete field %r of a frozen %s" % (name, cls.__name__))

            def __hash__(self: Any) -> int:
                return hash(tuple(getattr(self, n) for n in names))

            cls.__setattr__ = __setattr__  # type: ignore[method-assign]
            cls.__delattr__ = __delattr__  # type: ignore[method-assign]
            cls.__hash__ = __hash__  # type: ignore[method-assign]
        else:
            cls.__hash__ = None  # type: ignore[assignment]  # mutable and compared by value
        return cls

    return wrap
