// Nonlinear recurrent cells (docs/operators.md, "Recurrent cells"): lstm and gru (PyTorch's
// cells), lem (Long Expressive Memory), slstm and mlstm (xLSTM), ttt_linear and ttt_mlp (TTT
// layer), titans (a linear test-time memory with momentum). Each operator's folder under
// seqmix/rnn/ holds its reference, fast prefill and decode step; the shared interface of the
// cells is seqmix/rnn/common.hpp.
#pragma once

#include "seqmix/rnn/common.hpp"
#include "seqmix/rnn/engine.hpp"
#include "seqmix/rnn/gru/fast.hpp"
#include "seqmix/rnn/gru/reference.hpp"
#include "seqmix/rnn/gru/step.hpp"
#include "seqmix/rnn/lem/fast.hpp"
#include "seqmix/rnn/lem/reference.hpp"
#include "seqmix/rnn/lem/step.hpp"
#include "seqmix/rnn/lstm/fast.hpp"
#include "seqmix/rnn/lstm/reference.hpp"
#include "seqmix/rnn/lstm/step.hpp"
#include "seqmix/rnn/mlstm/chunked.hpp"
#include "seqmix/rnn/mlstm/reference.hpp"
#include "seqmix/rnn/mlstm/step.hpp"
#include "seqmix/rnn/slstm/fast.hpp"
#include "seqmix/rnn/slstm/reference.hpp"
#include "seqmix/rnn/slstm/step.hpp"
#include "seqmix/rnn/titans/chunked.hpp"
#include "seqmix/rnn/titans/mlp.hpp"
#include "seqmix/rnn/titans/mlp_reference.hpp"
#include "seqmix/rnn/titans/reference.hpp"
#include "seqmix/rnn/titans/step.hpp"
#include "seqmix/rnn/ttt/fast.hpp"
#include "seqmix/rnn/ttt/reference.hpp"
#include "seqmix/rnn/ttt/step.hpp"
