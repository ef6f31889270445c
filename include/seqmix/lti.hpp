// Linear time-invariant mixers (issue 16): long convolutions with filters as long as the
// sequence, and the state-space kernels that produce such filters. Each operator's folder under
// seqmix/lti/ holds its reference, fast prefill and decode step.
#pragma once

#include "seqmix/lti/h3/fast.hpp"
#include "seqmix/lti/h3/reference.hpp"
#include "seqmix/lti/h3/step.hpp"
#include "seqmix/lti/hyena/fast.hpp"
#include "seqmix/lti/hyena/reference.hpp"
#include "seqmix/lti/hyena/step.hpp"
#include "seqmix/lti/long_conv/direct.hpp"
#include "seqmix/lti/long_conv/fast.hpp"
#include "seqmix/lti/long_conv/fft.hpp"
#include "seqmix/lti/long_conv/reference.hpp"
#include "seqmix/lti/long_conv/step.hpp"
#include "seqmix/lti/ssm_kernel/kernel.hpp"
#include "seqmix/lti/ssm_kernel/reference.hpp"
#include "seqmix/lti/ssm_kernel/step.hpp"
#include "seqmix/lti/s5/reference.hpp"
#include "seqmix/lti/s5/scan.hpp"
#include "seqmix/lti/s5/step.hpp"
#include "seqmix/lti/fnet/fast.hpp"
#include "seqmix/lti/fnet/reference.hpp"
#include "seqmix/lti/base_conv/fast.hpp"
#include "seqmix/lti/base_conv/reference.hpp"
#include "seqmix/lti/base_conv/step.hpp"
