// Code compiled once per instruction-set level (kernels.cpp) lives in namespace
// rnncore::isa_<level>, so the linker never merges two builds of the same inline function.
#pragma once
#ifndef RNNCORE_ISA
#define RNNCORE_ISA baseline
#endif
#define RNNCORE_CAT2(a, b) a##b
#define RNNCORE_CAT(a, b) RNNCORE_CAT2(a, b)
#define RNNCORE_NS RNNCORE_CAT(isa_, RNNCORE_ISA)
